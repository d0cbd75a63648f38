//! kitfleet-node-agent (not yet implemented).
