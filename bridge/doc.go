// Package bridge carries messages between the MQTT broker and backend
// systems, so backend services never speak MQTT.
//
// A route (RouteConfig, the `bridges:` list) is either egress (MQTT topic
// filters → a connector target) or ingress (a connector source → an MQTT
// topic). Connectors live in bridge/<name> (activemq, kafka, mqtt, nats,
// rabbitmq, redis, webhook) behind the small Connector interface; the package that
// wires Ferry together maps config keys to their Factory. Nothing here knows MQTT
// sessions or imports the broker.
//
// # Use
//
//	st, _ := persistence.Open(persistence.Config{Dir: dataDir}, logger)
//	ob, _ := outbox.New(st, logger) // the outbox shares the store's group commit
//	b, err := bridge.New(routes, bridge.Deps{Outbox: ob, Publisher: pub, Logger: logger,
//		Registerer: reg, Factories: map[string]bridge.Factory{"nats": nats.New, "webhook": webhook.New, "mqtt": mqtt.New}})
//	err = b.Start(ctx)
//	// in a mochi OnPublish hook, before the PUBACK:
//	err = b.Offer(bridge.Message{Topic: ..., Payload: ..., QoS: ..., ClientID: ...})
//	// or OfferAsync, and hold only the PUBACK until its Pending's Wait returns
//	...
//	b.Close(ctx) // then ob.Close(), then st.Close()
//
// # Matching
//
// Egress filters are held in a topic trie built by New and never changed,
// so Offer matches without locks; its cost grows with the topic's depth,
// not with the number of routes, and a topic that matches nothing does not
// allocate.
//
// # Delivery
//
// at-least-once (default): Offer appends the message to the durable Outbox
// and returns once it is durable (group commit: concurrent Offers share a
// transaction and an fsync), so the publisher is acknowledged only then.
// One worker per route reads the outbox in seq order, hands batches to the
// connector and deletes them only when Deliver returned nil (the backend
// acked). Connectors classify their errors (KindOf): a Permanent error
// moves the message to the route's dead-letter store with the reason at
// once; an Unavailable one puts the route down: it holds its messages,
// probes the backend (Prober) with its backoff capped at MaxProbeInterval,
// and resumes in order when the backend answers, counting no attempt
// however long that takes; an error of unknown kind is retried with capped
// exponential backoff and jitter and counts against max_attempts only when
// a probe shows the backend up (a poison message), else it puts the route
// down too. A batch refused permanently or out of attempts is retried one
// message at a time to isolate the refused ones. The route's state is in
// States, the backend_up gauge and two log lines: one when it goes down,
// one when the backlog it held is out; Status adds the counters, the lag
// and whether the route backs off, and Pause and Resume stop and restart a
// route by hand (between batches; not stored).
// DeadLetters lists them; Replay puts them back at the end of the outbox;
// PurgeDeadLetters deletes them.
// The attempt count lives in memory: a restart gives a message fresh
// attempts.
//
// at-most-once: Offer puts a copy on the route's bounded memory queue and
// never blocks; a full queue drops its oldest message. Delivery is retried
// like above, then dropped (reason "failed"); a crash loses the queue.
//
// Ingress: a receiver whose source goes away (an Unavailable error) puts
// the route down until a probe succeeds, then runs again; it is never
// given up on. A receiver that stops for another reason runs again after
// the route's backoff.
//
// Ordering: one batch at a time, in outbox order (in-order, default). With
// ordering per-key, the key template's value is hashed onto KeyLanes lanes
// delivering in parallel, each in order: one key's messages stay in order,
// a slow key holds back only its lane (until its lane's queue is full).
// After a retry the backend may see a batch twice; every message carries
// a stable ID ("<route>-<seq>", never reused, kept by Replay) for it to
// de-duplicate.
//
// Bounds: max_bytes per route's outbox; when full, when_full "block" makes
// Offer return ErrOutboxFull without accepting the message for any route
// (the broker refuses the publish; the client resends), "drop-oldest"
// deletes the oldest messages. max_age drops older messages instead of
// delivering them. Every drop is counted by route and reason.
//
// # Concurrency and lifetimes
//
// Offer, DeadLetters and Replay are safe for concurrent use and may be
// called before Start (messages wait in the outbox or queue); Start and
// Close must not run concurrently with each other. Start's ctx bounds the connectors' start only; the
// workers live until Close. Close(ctx) stops accepting, lets the workers
// finish the batch in hand until ctx ends, then cancels them, and closes
// the connectors; undelivered at-least-once messages stay in the outbox for
// the next Start. Every goroutine the bridge starts is waited for by Close.
//
// # Metrics
//
// On the injected prometheus.Registerer, all labelled route:
// ferry_bridge_delivered_total, _retried_total, _failed_total,
// _dead_lettered_total, _refused_total, _dropped_total{reason},
// _outages_total, _queue_depth, _queue_bytes, _lag_seconds (age of the
// oldest undelivered message), _backend_up (0 while the route is down),
// _backend_down_seconds and _delivery_latency_seconds (accept → backend
// ack).
package bridge
