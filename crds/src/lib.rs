//! kitfleet-api
