//! Forwarding: delivering the feed's changes to the partner's own systems (issue 10).
//! Destinations ([`destination`]) are kept in the store and managed through
//! `/api/destinations` and [`cli`]; [`worker`] follows the feed for each and sends what matches
//! over HTTP ([`send`]) or to NATS JetStream ([`nats`]), signed the Standard Webhooks way
//! ([`sign`]), tried again on a schedule ([`retry`]), in a bounded share of the time while
//! ingest saturates the machine ([`pacer`]).

pub mod cli;
pub mod destination;
pub mod nats;
pub mod pacer;
pub mod replay;
pub mod retry;
pub mod send;
pub mod sign;
pub mod worker;
