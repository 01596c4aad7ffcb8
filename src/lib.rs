//! rebuy
