//! The capsa KVM microVM monitor (being built).
