//! KSPP's recommendations as data. The table lives in the API crate
//! ([`kitfleet_api::kspp`]), shared with validation and the node agent.

pub use kitfleet_api::kspp::*;
