//! Lists decoded element by element: rustler's `Vec<T>` decoder panics on
//! an improper tail (`[a | b]`), where a NIF must raise `badarg`.

use rustler::{Decoder, Encoder, Env, Error, NifResult, Term};

/// The elements of a proper list; `badarg` for anything else.
pub struct ProperList<T>(pub Vec<T>);

impl<'a, T: Decoder<'a>> Decoder<'a> for ProperList<T> {
    fn decode(term: Term<'a>) -> NifResult<Self> {
        let mut elements = Vec::new();
        let mut rest = term;
        while !rest.is_empty_list() {
            let (head, tail) = rest.list_get_cell().map_err(|_| Error::BadArg)?;
            elements.push(head.decode()?);
            rest = tail;
        }
        Ok(ProperList(elements))
    }
}

/// Back to a list (for `NifMap`s that hold one).
impl<T: Encoder> Encoder for ProperList<T> {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        self.0.encode(env)
    }
}
