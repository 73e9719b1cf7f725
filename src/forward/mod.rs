//! Forwarding: delivering the feed's changes to the partner's own systems (issue 10, being
//! built). So far: the Standard Webhooks signature every delivery carries ([`sign`]) and when a
//! failed delivery is tried again ([`retry`]).

pub mod destination;
pub mod retry;
pub mod sign;
