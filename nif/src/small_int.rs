//! Integers of small types from terms, range-checked.
//!
//! rustler's own decoders for `u8`/`u16`/`i8`/`i16` read a C `int` and cast
//! it (`256` becomes `0u8`, `65536` port `0`): a wrong argument would be
//! acted on as another value rather than refused. These go through `u32`
//! and a checked conversion: out of range is `badarg`.

use rustler::{Error, NifResult, Term};

/// An integer in `T`'s range (and in `u32`'s), else `badarg`.
pub fn decode_in_range<T: TryFrom<u32>>(term: Term<'_>) -> NifResult<T> {
    let wide: u32 = term.decode()?;
    T::try_from(wide).map_err(|_| Error::BadArg)
}
