// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2026 Ferry contributors

//go:build race

package mqtt

// raceEnabled: the race detector changes what allocates (and sync.Pool
// drops items on purpose under it), so allocation tests skip.
const raceEnabled = true
