//! small ops
