//! kitfleet-operator (not yet implemented).
