//! Query results read as plain values, column by column in the `SELECT`'s order, not deserialised:
//! a serde visitor per row type, run through serde-wasm-bindgen, was 10.8 KB of the gzipped wasm
//! for Switchboard's 15 row shapes. The schema is Switchboard's own, so the readers are lenient: a
//! `NULL` (or a value of another type) reads as `None`, or as 0 for [`int`].

use crate::core::error::Error;
use worker::{SqlCursor, SqlStorageValue as V};

/// Every row of `cursor`.
pub fn all(cursor: SqlCursor) -> Result<Vec<Vec<V>>, Error> {
    Ok(cursor.raw().collect::<worker::Result<Vec<_>>>()?)
}

/// The first row of `cursor`, if any (the rest are not read).
pub fn first(cursor: SqlCursor) -> Result<Option<Vec<V>>, Error> {
    Ok(cursor.raw().next().transpose()?)
}

/// Column `i` as text.
pub fn text(row: &[V], i: usize) -> Option<String> {
    match row.get(i) {
        Some(V::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Column `i` as an integer, if it is a number.
pub fn opt_int(row: &[V], i: usize) -> Option<i64> {
    match row.get(i) {
        Some(V::Integer(n)) => Some(*n),
        Some(V::Float(f)) => Some(*f as i64),
        _ => None,
    }
}

/// Column `i` as an integer; 0 when it is not a number.
pub fn int(row: &[V], i: usize) -> i64 {
    opt_int(row, i).unwrap_or(0)
}

/// The first row's first column as an integer (`SELECT count(*) …`, `SELECT value …`), if any.
pub fn first_int(cursor: SqlCursor) -> Result<Option<i64>, Error> {
    Ok(first(cursor)?.and_then(|r| opt_int(&r, 0)))
}
