//! What a call-centre manager reads: figures computed from the call records (answer rate,
//! abandons, service level, agents' handling times).

pub mod callbacks;
pub mod stats;
