package outbox

import "time"

// pollStep yields for a millisecond between two checks of a polled
// condition; it does not stand in for synchronisation.
func pollStep() { <-time.After(time.Millisecond) }
