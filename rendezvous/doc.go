// Package rendezvous is the "IM network" of Tubes: accounts, contacts,
// rooms, presence and the delivery of messages between accounts, built on
// NATS. The relay runs the server side (Server, Service); each daemon runs
// one Client per account.
//
// # Identity
//
// An account is a name and an ed25519 key, which is also a NATS user
// nkey. Every client signs the NATS server's connect nonce with its key;
// the server hands each new connection to the account service (NATS auth
// callout), which checks the signature and the name→key binding and
// answers with the connection's permissions. The NATS server then enforces
// them, so identity never rests on names inside payloads:
//
//	account alice may publish   tube.svc.alice.<op>          requests to the service
//	account alice may subscribe tube.inbox.alice.<kind>      deliveries (only the service publishes)
//	                            tube.reply.alice.…           replies to her requests
//	guest with key K            tube.guest.K.register|whois  (publish), tube.guest.K.reply.… (subscribe)
//
// The service reads the caller from the subject, and answers only on the
// caller's own reply subjects.
//
// # Flows
//
//	register:  guest --tube.guest.K.register{name,invite}--> service: acct.<name> = K
//	login:     client --CONNECT(user=name, nkey=K, sig)--> server --callout--> service
//	           service --user JWT with alice's permissions--> server
//	hello:     client --tube.svc.alice.hello{server,cid}--> service waits until the
//	           server's CONNECT event for that connection arrived, then answers; from
//	           then on alice's contacts see her online
//	send:      alice --tube.svc.alice.send{to:bob,kind,body}--> service checks that
//	           alice and bob approved each other (or share the room) and that bob is
//	           online --tube.inbox.bob.msg{from:alice,…}--> bob
//
// # Presence and Name_In_Use
//
// Presence is derived from live connections: the NATS servers' CONNECT and
// DISCONNECT events (plus a CONNZ snapshot when a relay starts), never from
// what an account says. When an account connects a second time, the newest
// connection wins: the older one receives tube.inbox.<name>.ctl
// {type:replaced} (Telepathy's ConnectionReplaced, reason Name_In_Use) and
// is closed; it does not reconnect on its own.
//
// # State and scale-out
//
// Accounts, contacts and rooms are one JetStream key-value bucket (file
// storage under the relay's data directory, or memory). Several relays may
// run the account service against one NATS cluster (Config.NATS): they
// share the bucket, each keeps an in-memory view of it fed by a watch, and
// the live relay with the smallest instance id carries out the duties that
// must happen once (presence fan-out, replacing connections).
//
// # What the account service trusts, and why
//
// Nothing a client says about itself. Each property of a connection that
// the service acts on, and what makes it safe:
//
//   - The account in a request's subject (tube.svc.<account>.<op>): the
//     auth callout gave the connection permission to publish on its own
//     account's subjects only, after checking the signed nonce against the
//     account's registered key; the NATS server enforces the permission.
//   - The nkey in a guest's subject (tube.guest.<nkey>.…): the callout
//     checked the nonce signature of that nkey, and guests may publish on
//     their own nkey's subjects only.
//   - The user, server id, client id and start time in CONNECT and
//     DISCONNECT advisories and in CONNZ answers: the NATS servers write
//     them on the system account, which only the relay's system user
//     reads and no client can publish to. The user of an account's
//     connection is the account the callout authorized.
//   - Being a relay instance (leader election, presence fan-out,
//     Name_In_Use): a connection of the service user, whose password the
//     NATS server checks itself (the service user is in the callout's
//     auth_users, so no callout answer can make a client that user), and
//     whose connection name, which only then counts, gives the instance
//     id. Account names that are the relay's own users are reserved.
//   - A hello's server and client ids: only waited for (at most 3 s), so
//     that the caller's contacts see it online once the server has
//     reported the connection; a wrong pair costs the caller the wait and
//     changes nothing else.
//
// Everything else in a request body (names of contacts, rooms, members)
// is an argument, checked against the store: the caller's relation to it
// decides, never the caller's word.
//
// # Files
//
// The server side: server.go (the NATS server and the relay's parts),
// service.go (the account service: start-up and request dispatch),
// auth_callout.go, registration.go (guests), contacts.go, rooms.go,
// delivery.go (keys, presence, TURN credentials, messages), presence.go
// (connections and presence), admin.go (operators), store.go (the
// key-value state). The client side: client.go (a daemon's connection and
// its requests), client_register.go, client_admin.go. Both: proto.go (the
// subjects and messages), metrics.go.
package rendezvous
