//! A tracer of serde data models that chooses enum variants per occurrence, so that it
//! sees every variant of every enum a type reaches.
//!
//! Like serde-reflection's (whose data types, [`Format`] and [`ContainerFormat`], and
//! unification it uses), it is a `Deserializer` that answers each request of a type's
//! `Deserialize` impl with a sample value while recording what was asked, and it runs the
//! type's `Deserialize` in passes. Unlike it, it decides each enum's variant where that
//! enum occurs: a variant not seen yet; else one beneath which an enum not seen whole was
//! found; else one that does not lead back into the same enum. serde-reflection takes an
//! enum's first variant once it has seen them all, so an enum found only beneath a later
//! variant of another (the `E` of a `Result<T, E>`) was never seen whole. An option, a
//! sequence or a map is given a value each time, except inside a recursion (a container
//! within itself), where it is given none, so that every sample value is finite.
//!
//! What it records is what serde-reflection records for the same type, so a method's shape
//! is unchanged wherever serde-reflection could trace it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde_reflection::{ContainerFormat, Error, Format, FormatHolder, Named, Registry, VariantFormat};

use crate::codec::MAX_DECODE_DEPTH;

type Result<T> = std::result::Result<T, Error>;

/// Sample values: 1 rather than 0 for integers, so that `NonZero*` types are followed.
const INT: u8 = 1;

/// Where one enum's exploration stands.
struct EnumProgress {
    /// Per variant: seen.
    seen: Vec<bool>,
    /// Per variant: the enums found beneath it, at any depth, in any pass.
    beneath: Vec<HashSet<&'static str>>,
}

/// The state of a trace across its passes.
#[derive(Default)]
pub(super) struct Tracer {
    registry: Registry,
    enums: HashMap<&'static str, EnumProgress>,
    /// Containers being traced, outermost first: a name found twice is a recursion.
    open: Vec<&'static str>,
    /// Enum variants being traced (enum, variant), outermost first.
    open_variants: Vec<(&'static str, usize)>,
    /// A variant was seen for the first time in this pass.
    progressed: bool,
}

impl Tracer {
    /// Starts a pass.
    pub(super) fn begin_pass(&mut self) {
        self.progressed = false;
    }

    /// True if the last pass saw a variant for the first time.
    pub(super) fn progressed(&self) -> bool {
        self.progressed
    }

    /// The enums seen so far that have variants not seen yet.
    pub(super) fn incomplete(&self) -> Vec<&'static str> {
        let mut names: Vec<_> =
            self.enums.iter().filter(|(_, p)| p.seen.iter().any(|s| !s)).map(|(name, _)| *name).collect();
        names.sort_unstable();
        names
    }

    /// The containers traced, normalized.
    pub(super) fn registry(mut self) -> Result<Registry> {
        for format in self.registry.values_mut() {
            format.normalize()?;
        }
        Ok(self.registry)
    }

    /// A deserializer of the top of a value, recording into `format`.
    pub(super) fn root<'t>(&'t mut self, format: &'t mut Format) -> Tracing<'t> {
        Tracing { tracer: self, format, depth: 0 }
    }

    fn in_recursion(&self) -> bool {
        let open = &self.open;
        open.iter().enumerate().any(|(i, name)| open[..i].contains(name))
    }

    fn unify_container(&mut self, name: &'static str, format: ContainerFormat) -> Result<()> {
        match self.registry.entry(name.to_owned()) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(format);
                Ok(())
            }
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut().unify(format),
        }
    }

    /// The variant of enum `name` (of `count` variants) to take here.
    fn choose(&mut self, name: &'static str, count: usize) -> usize {
        for (outer, variant) in &self.open_variants {
            if let Some(p) = self.enums.get_mut(outer) {
                p.beneath[*variant].insert(name);
            }
        }
        let recursive = self.open.contains(&name);
        self.enums
            .entry(name)
            .or_insert_with(|| EnumProgress { seen: vec![false; count], beneath: vec![HashSet::new(); count] });
        let enums = &self.enums;
        let p = &enums[name];
        let incomplete = |e: &&'static str| enums.get(e).is_some_and(|q| q.seen.contains(&false));
        let unseen = p.seen.iter().position(|s| !s);
        // A variant seen whose subtree does not come back here: ends a recursion.
        let ends = (0..count).find(|&i| p.seen[i] && !p.beneath[i].contains(name));
        let choice = if recursive {
            ends.or(unseen).unwrap_or(0)
        } else {
            unseen.or_else(|| (0..count).find(|&i| p.beneath[i].iter().any(incomplete))).or(ends).unwrap_or(0)
        };
        let p = self.enums.get_mut(name).expect("inserted above");
        if !p.seen[choice] {
            p.seen[choice] = true;
            self.progressed = true;
        }
        choice
    }
}

/// A `Deserializer` over one position of the traced value.
pub(super) struct Tracing<'t> {
    tracer: &'t mut Tracer,
    format: &'t mut Format,
    depth: usize,
}

impl<'t> Tracing<'t> {
    fn child<'c>(tracer: &'c mut Tracer, format: &'c mut Format, depth: usize) -> Result<Tracing<'c>> {
        if depth > MAX_DECODE_DEPTH as usize {
            return Err(Error::Custom(format!("the value nests deeper than {MAX_DECODE_DEPTH} levels")));
        }
        Ok(Tracing { tracer, format, depth })
    }

    /// Runs `f` with `name` among the open containers.
    fn within<T>(&mut self, name: &'static str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.tracer.open.push(name);
        let r = f(self);
        self.tracer.open.pop();
        r
    }
}

macro_rules! primitive {
    ($($method:ident $visit:ident $format:ident $value:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            self.format.unify(Format::$format)?;
            visitor.$visit($value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracing<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::NotSupported("deserialize_any"))
    }

    primitive! {
        deserialize_bool visit_bool Bool false;
        deserialize_i8 visit_i8 I8 INT as i8;
        deserialize_i16 visit_i16 I16 INT.into();
        deserialize_i32 visit_i32 I32 INT.into();
        deserialize_i64 visit_i64 I64 INT.into();
        deserialize_i128 visit_i128 I128 INT.into();
        deserialize_u8 visit_u8 U8 INT;
        deserialize_u16 visit_u16 U16 INT.into();
        deserialize_u32 visit_u32 U32 INT.into();
        deserialize_u64 visit_u64 U64 INT.into();
        deserialize_u128 visit_u128 U128 INT.into();
        deserialize_f32 visit_f32 F32 0.0;
        deserialize_f64 visit_f64 F64 0.0;
        deserialize_char visit_char Char 'A';
        deserialize_str visit_borrowed_str Str "";
        deserialize_string visit_string Str String::new();
        deserialize_bytes visit_borrowed_bytes Bytes &[];
        deserialize_byte_buf visit_byte_buf Bytes Vec::new();
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.format.unify(Format::Unit)?;
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let mut inner = Format::unknown();
        self.format.unify(Format::Option(Box::new(inner.clone())))?;
        if self.tracer.in_recursion() {
            return visitor.visit_none();
        }
        visitor.visit_some(Tracing::child(self.tracer, &mut inner, self.depth + 1)?)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value> {
        self.format.unify(Format::TypeName(name.into()))?;
        self.tracer.unify_container(name, ContainerFormat::UnitStruct)?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(mut self, name: &'static str, visitor: V) -> Result<V::Value> {
        self.format.unify(Format::TypeName(name.into()))?;
        let mut inner = Format::unknown();
        self.tracer.unify_container(name, ContainerFormat::NewTypeStruct(Box::new(inner.clone())))?;
        let depth = self.depth + 1;
        self.within(name, |this| visitor.visit_newtype_struct(Tracing::child(this.tracer, &mut inner, depth)?))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let mut inner = Format::unknown();
        self.format.unify(Format::Seq(Box::new(inner.clone())))?;
        let items = if self.tracer.in_recursion() { Vec::new() } else { vec![&mut inner] };
        visitor.visit_seq(Elements { tracer: self.tracer, formats: items.into_iter(), depth: self.depth + 1 })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        let mut formats: Vec<Format> = std::iter::repeat_with(Format::unknown).take(len).collect();
        self.format.unify(Format::Tuple(formats.clone()))?;
        visitor.visit_seq(Elements { tracer: self.tracer, formats: formats.iter_mut(), depth: self.depth + 1 })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.format.unify(Format::TypeName(name.into()))?;
        let mut formats: Vec<Format> = std::iter::repeat_with(Format::unknown).take(len).collect();
        self.tracer.unify_container(name, ContainerFormat::TupleStruct(formats.clone()))?;
        let depth = self.depth + 1;
        self.within(name, |this| {
            visitor.visit_seq(Elements { tracer: this.tracer, formats: formats.iter_mut(), depth })
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let (mut key, mut value) = (Format::unknown(), Format::unknown());
        self.format.unify(Format::Map { key: Box::new(key.clone()), value: Box::new(value.clone()) })?;
        let entries = if self.tracer.in_recursion() { Vec::new() } else { vec![&mut key, &mut value] };
        visitor.visit_map(Elements { tracer: self.tracer, formats: entries.into_iter(), depth: self.depth + 1 })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.format.unify(Format::TypeName(name.into()))?;
        let mut formats: Vec<Named<Format>> =
            fields.iter().map(|&f| Named { name: f.into(), value: Format::unknown() }).collect();
        self.tracer.unify_container(name, ContainerFormat::Struct(formats.clone()))?;
        let depth = self.depth + 1;
        self.within(name, |this| {
            let formats = formats.iter_mut().map(|n| &mut n.value);
            visitor.visit_seq(Elements { tracer: this.tracer, formats, depth })
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if variants.is_empty() {
            return Err(Error::NotSupported("deserialize_enum with 0 variants"));
        }
        self.format.unify(Format::TypeName(name.into()))?;
        self.tracer.unify_container(name, ContainerFormat::Enum(BTreeMap::new()))?;
        let index = self.tracer.choose(name, variants.len());
        let mut value = VariantFormat::unknown();
        let depth = self.depth + 1;
        self.tracer.open_variants.push((name, index));
        let r = self.within(name, |this| {
            visitor.visit_enum(Variant { tracer: this.tracer, index: index as u32, format: &mut value, depth })
        });
        self.tracer.open_variants.pop();
        let r = r?;
        let mut known = BTreeMap::new();
        known.insert(index as u32, Named { name: variants[index].to_owned(), value });
        self.tracer.unify_container(name, ContainerFormat::Enum(known))?;
        Ok(r)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::NotSupported("deserialize_identifier"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error::NotSupported("deserialize_ignored_any"))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple, struct or map (keys and values alternate).
struct Elements<'t, I> {
    tracer: &'t mut Tracer,
    formats: I,
    depth: usize,
}

impl<'de, 'f, I: Iterator<Item = &'f mut Format>> de::SeqAccess<'de> for Elements<'_, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.formats.next() {
            Some(format) => seed.deserialize(Tracing::child(self.tracer, format, self.depth)?).map(Some),
            None => Ok(None),
        }
    }
}

impl<'de, 'f, I: Iterator<Item = &'f mut Format>> de::MapAccess<'de> for Elements<'_, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        de::SeqAccess::next_element_seed(self, seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        de::SeqAccess::next_element_seed(self, seed)?.ok_or(Error::NotSupported("a map value without its key"))
    }
}

/// The variant chosen for one occurrence of an enum.
struct Variant<'t> {
    tracer: &'t mut Tracer,
    index: u32,
    format: &'t mut VariantFormat,
    depth: usize,
}

impl<'de> de::EnumAccess<'de> for Variant<'_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index: de::value::U32Deserializer<Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        self.format.unify(VariantFormat::Unit)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        let mut inner = Format::unknown();
        self.format.unify(VariantFormat::NewType(Box::new(inner.clone())))?;
        seed.deserialize(Tracing::child(self.tracer, &mut inner, self.depth)?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        let mut formats: Vec<Format> = std::iter::repeat_with(Format::unknown).take(len).collect();
        self.format.unify(VariantFormat::Tuple(formats.clone()))?;
        visitor.visit_seq(Elements { tracer: self.tracer, formats: formats.iter_mut(), depth: self.depth })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value> {
        let mut formats: Vec<Named<Format>> =
            fields.iter().map(|&f| Named { name: f.into(), value: Format::unknown() }).collect();
        self.format.unify(VariantFormat::Struct(formats.clone()))?;
        let formats = formats.iter_mut().map(|n| &mut n.value);
        visitor.visit_seq(Elements { tracer: self.tracer, formats, depth: self.depth })
    }
}
