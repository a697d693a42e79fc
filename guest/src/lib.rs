//! The capsa guest kernel (being built).
