//! What a call-centre manager reads: figures computed from the call records (answer rate,
//! abandons, service level, agents' handling times), the missed-call callback worklist, and
//! exports of both.

pub mod callbacks;
pub mod cli;
pub mod export;
pub mod stats;
