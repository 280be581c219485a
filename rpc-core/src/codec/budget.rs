//! The decode budget: a wrapping [`Deserializer`] that bounds what decoding one message may
//! allocate and how deep it may nest.
//!
//! Why: a frame is at most the negotiated message limit (4 MiB by default), but what it
//! *decodes into* was not bounded at all, because the wire size of a value says little about
//! its size in memory. Three attacks showed it:
//!
//! - **Memory.** Each `None` of a `Vec<Option<[u8; 1000]>>` is one byte on the wire and 1001
//!   bytes in the vector, so a 1 MiB frame of zero bytes took over 1 GiB of heap (~1000x
//!   the frame).
//! - **CPU.** An element of a zero-sized type (`()`, a unit struct) is zero bytes on the
//!   wire, so a frame of a few bytes declaring a `Vec<()>` of 2^60 elements kept a runtime
//!   worker pushing nothing for seconds, or forever.
//! - **Stack.** A recursive type (`enum Tree { Leaf, Node(Box<Tree>) }`) is decoded by
//!   recursion at about one wire byte per level, so a peer could overflow the stack and
//!   abort the process.
//!
//! [`Budgeted`] wraps the codec's deserializer (the same idea as `serde_path_to_error` and
//! `serde_ignored`): the visitor, `SeqAccess`, `MapAccess`, `EnumAccess`, `VariantAccess`
//! and every seed handed to them are wrapped too, so every nested value of the message goes
//! through it, whoever's `Deserialize` impl asks for it. Per decode it enforces:
//!
//! - a **budget** of bytes ([`DecodeLimits::budget`]: by default 16x the frame + 64 KiB).
//!   Each element of a *sequence* or *map* (`deserialize_seq`, `deserialize_map`, and what
//!   `deserialize_any` produces) is charged `max(size_of::<Element>(), 1)` when the format
//!   says it is there (a map entry: its key and its value, each so), and each string or byte
//!   buffer its length (JSON's byte buffers, arrays of numbers, 1 per element; JSON's object
//!   keys and variant names are strings, charged their length too). Tuples, arrays, structs and enum payloads are not charged: they live
//!   inline in whatever holds them, which was charged already. A zero-sized element still
//!   costs 1, so a huge declared length of `()` fails after at most the budget's worth of
//!   (cheap) steps instead of spinning.
//! - **No preallocation from declared lengths.** The wrapped accesses' `size_hint` is `None`,
//!   so serde's `Vec`/`HashMap`/... visitors grow by doubling from what is really decoded
//!   instead of reserving up to 1 MiB per collection from a length the peer wrote; the
//!   memory really allocated then stays within about 2x what was charged.
//! - a **nesting depth** ([`DecodeLimits::max_depth`], 64): each compound value (a sequence,
//!   map, tuple, struct, enum, `Some`, newtype struct) is one level, counted when the format
//!   hands it to its visitor; deeper fails before recursing further, so the stack a decode
//!   uses is bounded whatever the type.
//!
//! A limit that is reached fails the decode with an error naming it (see
//! [`State::describe`]); it is sticky, so a `Deserialize` impl that swallows the error (and,
//! say, tries another shape) cannot decode past it: the decode fails anyway.
//!
//! What it does not see: a heap indirection *inside* an element (`Box<T>`, `Arc<T>`) is not
//! a serde call, so `Vec<Box<Option<[u8; 1000]>>>` is charged 8 bytes (the pointer) for a
//! 1001-byte allocation. Types meant for untrusted peers should keep large values inline or
//! behind a collection.
//!
//! Cost: the wrapper is on every message's path; it allocates nothing, keeps its counters in
//! one [`State`] on the decoding function's stack shared by reference, and inlines into the
//! format's own code. Measured with callgrind (release): a `Vec<u64>` of 100 000 elements
//! costs about 3 instructions more per element with bincode (+7 to 9%) and 2 fewer with
//! postcard; a 1 MiB `ByteBuf` is unchanged (it is one `visit_byte_buf`); a small
//! `(u64, String, Option<u32>, Vec<u8>)` about 140 more (the per-decode setup, and the
//! `Vec` growing from empty instead of being sized from its declared length).
//!
//! Stack: 64 levels of `Tree` take under 16 KiB in a release build and under 96 KiB in a
//! debug one.

use std::cell::Cell;
use std::fmt;
use std::mem::size_of;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::DecodeLimits;

/// Which limit a decode ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tripped {
    /// The allocation budget.
    Budget,
    /// The nesting depth.
    Depth,
}

/// The counters of one decode, shared by every wrapper of that decode.
pub(crate) struct State {
    /// Bytes of budget left.
    remaining: Cell<usize>,
    /// Levels of nesting left.
    depth_left: Cell<u32>,
    /// The limit the decode ran into, if any; once set it stays.
    tripped: Cell<Option<Tripped>>,
    limits: DecodeLimits,
    len: usize,
}

impl State {
    /// The counters for decoding a message of `len` bytes under `limits`.
    #[inline]
    pub(crate) fn new(len: usize, limits: DecodeLimits) -> State {
        State {
            remaining: Cell::new(limits.budget(len)),
            depth_left: Cell::new(limits.max_depth),
            tripped: Cell::new(None),
            limits,
            len,
        }
    }

    /// The limit this decode ran into, if any.
    #[inline]
    pub(super) fn tripped(&self) -> Option<Tripped> {
        self.tripped.get()
    }

    /// Why the decode failed, for a limit it ran into.
    pub(super) fn describe(&self, tripped: Tripped) -> String {
        let DecodeLimits { ratio, base, max_depth, .. } = self.limits;
        match tripped {
            Tripped::Budget => format!(
                "the message would allocate more than {} bytes to decode (limit: {ratio}x its {}-byte size + {})",
                self.limits.budget(self.len),
                self.len,
                Bytes(base),
            ),
            Tripped::Depth => format!("the message nests deeper than {max_depth} levels"),
        }
    }

    /// Takes `n` bytes from the budget.
    #[inline(always)]
    fn charge<E: de::Error>(&self, n: usize) -> Result<(), E> {
        let left = self.remaining.get();
        if n <= left {
            self.remaining.set(left - n);
            Ok(())
        } else {
            Err(self.trip(Tripped::Budget))
        }
    }

    /// Goes one level deeper.
    #[inline(always)]
    fn enter<E: de::Error>(&self) -> Result<(), E> {
        let left = self.depth_left.get();
        if left == 0 {
            return Err(self.trip(Tripped::Depth));
        }
        self.depth_left.set(left - 1);
        Ok(())
    }

    /// Comes back up from [`enter`](Self::enter).
    #[inline(always)]
    fn leave(&self) {
        self.depth_left.set(self.depth_left.get() + 1);
    }

    #[cold]
    #[inline(never)]
    fn trip<E: de::Error>(&self, tripped: Tripped) -> E {
        // Sticky: nothing more can be charged, and the decode fails even if a Deserialize
        // impl swallows this error.
        self.remaining.set(0);
        if self.tripped.get().is_none() {
            self.tripped.set(Some(tripped));
        }
        E::custom(self.describe(tripped))
    }
}

/// `n` bytes, as KiB/MiB when it is a whole number of them.
struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{} KiB", n >> 10),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// What one element of type `T` of a collection is charged: its inline size, at least 1.
#[inline(always)]
const fn cost<T>() -> usize {
    if size_of::<T>() == 0 { 1 } else { size_of::<T>() }
}

/// The root of a budgeted decode, for formats that take a seed (bincode's
/// `Options::deserialize_seed`, which keeps its trailing-bytes check).
pub(super) struct Root<'s, T> {
    state: &'s State,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl<'s, T> Root<'s, T> {
    #[inline]
    pub(super) fn new(state: &'s State) -> Self {
        Root { state, _value: std::marker::PhantomData }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Root<'_, T> {
    type Value = T;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        T::deserialize(Budgeted::new(de, self.state))
    }
}

/// A [`Deserializer`] that charges what it produces to a [`State`].
pub(crate) struct Budgeted<'s, D> {
    de: D,
    state: &'s State,
}

impl<'s, D> Budgeted<'s, D> {
    /// Wraps `de`, charging to `state`.
    #[inline]
    pub(crate) fn new(de: D, state: &'s State) -> Self {
        Budgeted { de, state }
    }
}

/// Forwards `deserialize_*` methods with the visitor wrapped; `$collection` says whether
/// the elements of a sequence or map the format hands the visitor are charged.
macro_rules! forward_deserialize {
    ($collection:literal => $($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method($($arg,)* Visit::<_, $collection> { inner: visitor, state: self.state })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Budgeted<'_, D> {
    type Error = D::Error;

    forward_deserialize! { true =>
        // Whatever a self-describing format finds: a sequence or map there is a collection.
        deserialize_any();
        deserialize_ignored_any();
        deserialize_seq();
        deserialize_map();
        // A byte buffer is charged its length: the binary codecs hand it over whole
        // (`visit_byte_buf` and friends, charged there), JSON as an array of numbers (a
        // sequence, charged 1 byte per element here).
        deserialize_bytes();
        deserialize_byte_buf();
    }

    forward_deserialize! { false =>
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A wrapped [`Visitor`]. `COLLECTION`: a sequence or map it is given is a collection whose
/// elements are charged (from `deserialize_seq`/`deserialize_map`/`deserialize_any`), not
/// the inline fields of a tuple or struct.
struct Visit<'s, V, const COLLECTION: bool> {
    inner: V,
    state: &'s State,
}

/// Forwards `visit_*` methods that carry a plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

/// Forwards `visit_*` methods that carry a string or bytes, charging their length.
macro_rules! charge_visit {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.state.charge(v.len())?;
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>, const COLLECTION: bool> Visitor<'de> for Visit<'_, V, COLLECTION> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
    }

    charge_visit! {
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    #[inline]
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    #[inline]
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.state.enter()?;
        let r = self.inner.visit_some(Budgeted::new(de, self.state));
        self.state.leave();
        r
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.state.enter()?;
        let r = self.inner.visit_newtype_struct(Budgeted::new(de, self.state));
        self.state.leave();
        r
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.state.enter()?;
        let r = self.inner.visit_seq(Seq::<_, COLLECTION> { inner: seq, state: self.state });
        self.state.leave();
        r
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.state.enter()?;
        let r = self.inner.visit_map(Map::<_, COLLECTION> { inner: map, state: self.state });
        self.state.leave();
        r
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.state.enter()?;
        let r = self.inner.visit_enum(Enum { inner: data, state: self.state });
        self.state.leave();
        r
    }
}

/// A wrapped [`DeserializeSeed`]: the value it produces is decoded through [`Budgeted`],
/// after charging `cost::<T::Value>()` when `CHARGE` (an element of a collection).
struct Seed<'s, T, const CHARGE: bool> {
    inner: T,
    state: &'s State,
}

impl<'de, T: DeserializeSeed<'de>, const CHARGE: bool> DeserializeSeed<'de> for Seed<'_, T, CHARGE> {
    type Value = T::Value;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T::Value, D::Error> {
        if CHARGE {
            self.state.charge(cost::<T::Value>())?;
        }
        self.inner.deserialize(Budgeted::new(de, self.state))
    }
}

/// A wrapped [`SeqAccess`]; `CHARGE`: its elements are a collection's.
struct Seq<'s, A, const CHARGE: bool> {
    inner: A,
    state: &'s State,
}

impl<'de, A: SeqAccess<'de>, const CHARGE: bool> SeqAccess<'de> for Seq<'_, A, CHARGE> {
    type Error = A::Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(Seed::<_, CHARGE> { inner: seed, state: self.state })
    }

    /// Hidden: a declared length is the peer's word, not bytes that are there; a visitor
    /// that preallocated from it would spend memory nobody charged.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

/// A wrapped [`MapAccess`]; `CHARGE`: its entries are a collection's.
struct Map<'s, A, const CHARGE: bool> {
    inner: A,
    state: &'s State,
}

impl<'de, A: MapAccess<'de>, const CHARGE: bool> MapAccess<'de> for Map<'_, A, CHARGE> {
    type Error = A::Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(Seed::<_, CHARGE> { inner: seed, state: self.state })
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(Seed::<_, CHARGE> { inner: seed, state: self.state })
    }

    #[inline]
    fn next_entry_seed<K: DeserializeSeed<'de>, T: DeserializeSeed<'de>>(
        &mut self,
        key: K,
        value: T,
    ) -> Result<Option<(K::Value, T::Value)>, A::Error> {
        self.inner.next_entry_seed(
            Seed::<_, CHARGE> { inner: key, state: self.state },
            Seed::<_, CHARGE> { inner: value, state: self.state },
        )
    }

    /// Hidden, as for [`Seq`].
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        None
    }
}

/// A wrapped [`EnumAccess`].
struct Enum<'s, A> {
    inner: A,
    state: &'s State,
}

impl<'s, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'s, A> {
    type Error = A::Error;
    type Variant = Variant<'s, A::Variant>;

    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.inner.variant_seed(Seed::<_, false> { inner: seed, state: self.state })?;
        Ok((value, Variant { inner: variant, state: self.state }))
    }
}

/// A wrapped [`VariantAccess`]. A newtype variant's payload is on its enum's level (counted
/// by `visit_enum`); a tuple or struct variant's fields are one level more, as a struct's.
/// None of it is charged: it is inline in the enum.
struct Variant<'s, A> {
    inner: A,
    state: &'s State,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed::<_, false> { inner: seed, state: self.state })
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, Visit::<_, false> { inner: visitor, state: self.state })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, Visit::<_, false> { inner: visitor, state: self.state })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::codec::{Codec, DECODE_BASE, DECODE_RATIO};

    const CODECS: [Codec; 2] = [Codec::Bincode, Codec::Postcard];

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        name: String,
        tags: Vec<String>,
        blob: ByteBuf,
        pair: (u8, i128),
        array: [u16; 4],
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapper(u32);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(Inner),
        Tuple(i8, char),
        Struct { x: f64, wrapped: Wrapper, maybe: Option<Box<Shape>> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Outer {
        shapes: Vec<Shape>,
        by_name: BTreeMap<String, Vec<u64>>,
        by_id: HashMap<u32, Option<String>>,
        unit: (),
        empty: Vec<()>,
        flag: bool,
    }

    fn sample() -> Outer {
        let inner = Inner {
            name: "name".into(),
            tags: vec!["a".into(), String::new(), "ccc".into()],
            blob: ByteBuf::from(vec![0, 1, 2, 255]),
            pair: (7, -1 << 100),
            array: [1, 2, 3, u16::MAX],
        };
        let nested = Shape::Struct { x: 0.5, wrapped: Wrapper(9), maybe: Some(Box::new(Shape::Tuple(-3, 'é'))) };
        Outer {
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(inner),
                nested,
                Shape::Struct { x: -1.0, wrapped: Wrapper(0), maybe: None },
            ],
            by_name: [("one".to_string(), vec![1]), ("many".to_string(), vec![u64::MAX, 0, 300])].into(),
            by_id: [(1, None), (2, Some("two".to_string()))].into(),
            unit: (),
            empty: vec![(); 3],
            flag: true,
        }
    }

    #[test]
    fn normal_values_round_trip_unchanged_through_every_codec() {
        for c in Codec::ALL {
            let v = sample();
            let bytes = c.encode(&v, 1 << 20).unwrap();
            assert_eq!(c.decode::<Outer>(&bytes).unwrap(), v, "{c:?}");
            // And as the codec decodes without the wrapper: the wrapper changes nothing.
            let plain: Outer = match c {
                Codec::Bincode => bincode::Options::deserialize(bincode::DefaultOptions::new(), &bytes).unwrap(),
                Codec::Postcard => postcard::from_bytes(&bytes).unwrap(),
                _ => serde_json::from_slice(&bytes).unwrap(),
            };
            assert_eq!(plain, v);
        }
    }

    #[test]
    fn borrowed_strings_and_bytes_decode_through_the_wrapper() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Borrowing<'a> {
            s: &'a str,
            #[serde(with = "serde_bytes")]
            b: &'a [u8],
        }
        for c in CODECS {
            let v = Borrowing { s: "borrowed", b: b"bytes" };
            let bytes = c.encode(&v, 100).unwrap();
            let state = State::new(bytes.len(), DecodeLimits::DEFAULT);
            let back = match c {
                Codec::Bincode => {
                    bincode::Options::deserialize_seed(bincode::DefaultOptions::new(), Root::new(&state), &bytes)
                        .unwrap()
                }
                _ => Borrowing::deserialize(Budgeted::new(&mut postcard::Deserializer::from_bytes(&bytes), &state))
                    .unwrap(),
            };
            assert_eq!(back, v);
            // Charged their lengths.
            assert_eq!(state.remaining.get(), DecodeLimits::DEFAULT.budget(bytes.len()) - 8 - 5);
        }
    }

    /// A frame for a sequence of `n` elements whose encoding is `element`, each.
    fn seq_frame(c: Codec, n: u64, element: &[u8], count: usize) -> Vec<u8> {
        // A length is a varint, as a u64 is, in both codecs.
        let mut bytes = c.encode(&n, 16).unwrap().to_vec();
        for _ in 0..count {
            bytes.extend_from_slice(element);
        }
        bytes
    }

    #[test]
    fn each_element_of_a_sequence_is_charged_its_size() {
        for c in Codec::ALL {
            // 100 u32 elements are 400 bytes: exactly a budget of 400 is enough, 399 is not.
            let bytes = c.encode(&vec![1u32; 100], 1000).unwrap();
            let exact = DecodeLimits::DEFAULT.with_ratio(0).with_base(400);
            assert_eq!(c.decode_with::<Vec<u32>>(&bytes, exact).unwrap(), vec![1; 100]);
            let err = c.decode_with::<Vec<u32>>(&bytes, exact.with_base(399)).unwrap_err();
            assert!(err.starts_with("the message would allocate more than 399 bytes to decode"), "{err}");
        }
    }

    #[test]
    fn a_zero_sized_element_is_charged_one_byte() {
        for c in CODECS {
            let bytes = seq_frame(c, 10, &[], 0);
            let limits = DecodeLimits::DEFAULT.with_ratio(0).with_base(10);
            assert_eq!(c.decode_with::<Vec<()>>(&bytes, limits).unwrap().len(), 10);
            assert!(c.decode_with::<Vec<()>>(&bytes, limits.with_base(9)).is_err());
        }
    }

    #[test]
    fn a_huge_declared_count_of_unit_fails_with_the_budget_error() {
        for c in CODECS {
            let bytes = seq_frame(c, 1 << 60, &[], 0);
            let err = c.decode::<Vec<()>>(&bytes).unwrap_err();
            let budget = DECODE_RATIO * bytes.len() + DECODE_BASE;
            assert_eq!(
                err,
                format!(
                    "the message would allocate more than {budget} bytes to decode (limit: 16x its {}-byte size + 64 KiB)",
                    bytes.len()
                )
            );
        }
    }

    #[test]
    fn a_map_entry_is_charged_its_key_and_its_value() {
        for c in Codec::ALL {
            let map: BTreeMap<u32, u64> = (0..10).map(|i| (i, i.into())).collect();
            let bytes = c.encode(&map, 1000).unwrap();
            let exact = DecodeLimits::DEFAULT.with_ratio(0).with_base(10 * (4 + 8));
            assert_eq!(c.decode_with::<BTreeMap<u32, u64>>(&bytes, exact).unwrap(), map);
            assert_eq!(c.decode_with::<HashMap<u32, u64>>(&bytes, exact).unwrap().len(), 10);
            assert!(c.decode_with::<BTreeMap<u32, u64>>(&bytes, exact.with_base(10 * 12 - 1)).is_err());
        }
    }

    #[test]
    fn strings_and_byte_buffers_are_charged_their_length() {
        for c in Codec::ALL {
            let v = ("0123456789".to_string(), ByteBuf::from(vec![0u8; 20]));
            let bytes = c.encode(&v, 1000).unwrap();
            let exact = DecodeLimits::DEFAULT.with_ratio(0).with_base(30);
            assert_eq!(c.decode_with::<(String, ByteBuf)>(&bytes, exact).unwrap(), v);
            assert!(c.decode_with::<(String, ByteBuf)>(&bytes, exact.with_base(29)).is_err());
        }
    }

    #[test]
    fn tuples_structs_and_arrays_are_inline_and_not_charged() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Fields {
            a: u64,
            b: [u64; 32],
            c: (u8, u16, u32),
        }
        for c in CODECS {
            let v = Fields { a: 1, b: [2; 32], c: (3, 4, 5) };
            let bytes = c.encode(&v, 1000).unwrap();
            let nothing = DecodeLimits::DEFAULT.with_ratio(0).with_base(0);
            assert_eq!(c.decode_with::<Fields>(&bytes, nothing).unwrap(), v);
        }
    }

    #[test]
    fn twenty_four_times_the_frame_fails_and_eight_times_decodes() {
        for c in CODECS {
            // 100 000 empty strings: 1 byte each on the wire, 24 in the vector.
            let strings = seq_frame(c, 100_000, &[0], 100_000);
            let err = c.decode::<Vec<String>>(&strings).unwrap_err();
            assert!(err.starts_with("the message would allocate more than"), "{err}");
            // 100 000 small u64s: 1 byte each, 8 in the vector.
            let numbers = seq_frame(c, 100_000, &[5], 100_000);
            assert_eq!(c.decode::<Vec<u64>>(&numbers).unwrap(), vec![5; 100_000]);
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Box<Tree>),
    }

    /// `nodes` nodes over a leaf: `nodes + 1` levels.
    fn tree_frame(nodes: usize) -> Vec<u8> {
        // Variant indexes are varints in both codecs: Node 1, Leaf 0.
        let mut bytes = vec![1u8; nodes];
        bytes.push(0);
        bytes
    }

    #[test]
    fn nesting_up_to_the_depth_limit_decodes_and_one_more_level_fails() {
        for c in CODECS {
            let limits = DecodeLimits::DEFAULT.with_max_depth(10);
            let tree = c.decode_with::<Tree>(&tree_frame(9), limits).unwrap();
            assert_eq!(c.encode(&tree, 100).unwrap().as_ref(), tree_frame(9));
            let err = c.decode_with::<Tree>(&tree_frame(10), limits).unwrap_err();
            assert_eq!(err, "the message nests deeper than 10 levels");
            let err = c.decode::<Tree>(&tree_frame(100_000)).unwrap_err();
            assert_eq!(err, "the message nests deeper than 64 levels");
        }
    }

    /// JSON of `nodes` nodes over a leaf: `{"Node":{"Node":..."Leaf"...}}`.
    fn json_tree(nodes: usize) -> Vec<u8> {
        let mut json = r#"{"Node":"#.repeat(nodes).into_bytes();
        json.extend_from_slice(br#""Leaf""#);
        json.extend(std::iter::repeat_n(b'}', nodes));
        json
    }

    #[test]
    fn json_nesting_up_to_the_depth_limit_decodes_and_one_more_level_fails() {
        let limits = DecodeLimits::DEFAULT.with_max_depth(10);
        let tree = Codec::Json.decode_with::<Tree>(&json_tree(9), limits).unwrap();
        assert_eq!(Codec::Json.encode(&tree, 1000).unwrap().as_ref(), json_tree(9));
        let err = Codec::Json.decode_with::<Tree>(&json_tree(10), limits).unwrap_err();
        assert_eq!(err, "the message nests deeper than 10 levels");
        let err = Codec::Json.decode::<Tree>(&json_tree(100_000)).unwrap_err();
        assert_eq!(err, "the message nests deeper than 64 levels");
    }

    #[test]
    fn serde_json_s_own_recursion_limit_stays_on_under_a_raised_depth_limit() {
        let limits = DecodeLimits::DEFAULT.with_max_depth(10_000);
        assert!(Codec::Json.decode_with::<Tree>(&json_tree(100), limits).is_ok());
        let err = Codec::Json.decode_with::<Tree>(&json_tree(200), limits).unwrap_err();
        assert!(err.starts_with("recursion limit exceeded"), "{err}");
    }

    #[test]
    fn json_byte_buffers_as_arrays_are_charged_their_length_and_strings_are_accepted() {
        let exact = DecodeLimits::DEFAULT.with_ratio(0).with_base(5);
        assert_eq!(
            Codec::Json.decode_with::<ByteBuf>(b"[1,2,3,4,5]", exact).unwrap(),
            ByteBuf::from(vec![1, 2, 3, 4, 5])
        );
        assert!(Codec::Json.decode_with::<ByteBuf>(b"[1,2,3,4,5]", exact.with_base(4)).is_err());
        assert_eq!(Codec::Json.decode_with::<ByteBuf>(br#""hello""#, exact).unwrap(), ByteBuf::from(b"hello".to_vec()));
        assert!(Codec::Json.decode::<ByteBuf>(b"[256]").is_err());
    }

    #[test]
    fn options_newtypes_sequences_and_structs_each_count_as_a_level() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct S(Option<Vec<(u8,)>>);
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Named {
            s: S,
        }
        for c in CODECS {
            let v = Named { s: S(Some(vec![(1,)])) };
            let bytes = c.encode(&v, 100).unwrap();
            // Named, S, Some, Vec, (u8,): 5 levels.
            let limits = DecodeLimits::DEFAULT.with_max_depth(5);
            assert_eq!(c.decode_with::<Named>(&bytes, limits).unwrap(), v);
            assert!(c.decode_with::<Named>(&bytes, limits.with_max_depth(4)).unwrap_err().contains("deeper than 4"));
        }
    }

    #[test]
    fn declared_lengths_are_hidden_from_visitors() {
        struct Hints(Vec<Option<usize>>);
        impl<'de> Deserialize<'de> for Hints {
            fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Hints;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a sequence")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Hints, A::Error> {
                        let mut hints = vec![seq.size_hint()];
                        while seq.next_element::<u8>()?.is_some() {
                            hints.push(seq.size_hint());
                        }
                        Ok(Hints(hints))
                    }
                }
                de.deserialize_seq(V)
            }
        }
        for c in Codec::ALL {
            let bytes = c.encode(&vec![1u8, 2, 3], 100).unwrap();
            assert_eq!(c.decode::<Hints>(&bytes).unwrap().0, vec![None; 4]);
        }
    }

    #[test]
    fn a_limit_error_swallowed_by_a_deserialize_impl_still_fails_the_decode() {
        /// Decodes a `Vec<()>`, and is happy when that fails.
        #[derive(Debug)]
        struct Lenient;
        impl<'de> Deserialize<'de> for Lenient {
            fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                let _ = Vec::<()>::deserialize(de);
                Ok(Lenient)
            }
        }
        for c in CODECS {
            let bytes = seq_frame(c, 1 << 60, &[], 0);
            let err = c.decode::<Lenient>(&bytes).unwrap_err();
            assert!(err.starts_with("the message would allocate more than"), "{err}");
        }
    }

    #[test]
    fn deserialize_any_and_ignored_any_go_through_the_wrapper() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, SeqDeserializer};

        // A self-describing source (serde's value deserializers support `any`).
        let units = || -> SeqDeserializer<std::vec::IntoIter<()>, Error> { vec![(); 1000].into_deserializer() };
        let state = State::new(0, DecodeLimits::DEFAULT.with_ratio(0).with_base(100));
        let err = de::IgnoredAny::deserialize(Budgeted::new(units(), &state)).unwrap_err();
        assert!(err.to_string().starts_with("the message would allocate more than 100 bytes"), "{err}");

        /// Counts a sequence's elements through `deserialize_any`.
        struct Count(usize);
        impl<'de> Deserialize<'de> for Count {
            fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Count;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("anything")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                        let mut n = 0;
                        while seq.next_element::<de::IgnoredAny>()?.is_some() {
                            n += 1;
                        }
                        Ok(Count(n))
                    }
                }
                de.deserialize_any(V)
            }
        }
        let state = State::new(0, DecodeLimits::DEFAULT.with_ratio(0).with_base(1000));
        assert_eq!(Count::deserialize(Budgeted::new(units(), &state)).unwrap().0, 1000);
        let state = State::new(0, DecodeLimits::DEFAULT.with_ratio(0).with_base(999));
        assert!(Count::deserialize(Budgeted::new(units(), &state)).is_err());
        assert_eq!(state.tripped(), Some(Tripped::Budget));

        // The codecs do not support `any`: their own error, unchanged.
        for c in CODECS {
            assert!(c.decode::<Count>(&[0]).is_err());
        }
    }

    #[test]
    fn a_panicking_deserialize_is_a_decode_error() {
        #[derive(Debug)]
        struct Bomb;
        impl<'de> Deserialize<'de> for Bomb {
            fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                panic!("bomb")
            }
        }
        for c in CODECS {
            let err = c.decode::<Vec<Bomb>>(&[1, 0]).unwrap_err();
            assert_eq!(err, "its Deserialize impl panicked: bomb");
        }
    }

    #[test]
    fn the_budget_message_names_the_base_in_its_unit() {
        let state = State::new(5, DecodeLimits::DEFAULT.with_ratio(2).with_base(1 << 20));
        assert_eq!(
            state.describe(Tripped::Budget),
            "the message would allocate more than 1048586 bytes to decode (limit: 2x its 5-byte size + 1 MiB)"
        );
        let state = State::new(5, DecodeLimits::DEFAULT.with_base(100));
        assert!(state.describe(Tripped::Budget).ends_with("(limit: 16x its 5-byte size + 100 bytes)"));
        assert_eq!(DecodeLimits::DEFAULT.with_ratio(usize::MAX).budget(2), usize::MAX);
    }
}
