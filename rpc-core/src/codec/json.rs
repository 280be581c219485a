//! What the JSON codec refuses to encode: values JSON cannot carry faithfully.
//!
//! serde_json writes a NaN or an infinity as `null`, and `Some(x)` as `x`. Decoded again,
//! a `NaN` in an `f64` fails, but a `NaN` in an `Option<f64>` comes back as `None`, and so
//! does `Some(None)` in an `Option<Option<T>>` or `Some(())`: the peer would get another
//! value than the one sent, with no error anywhere. [`Faithful`] wraps a value's
//! serialization and fails it instead, naming what JSON cannot carry (the call fails with
//! an encode error before anything is written). Everything else is forwarded untouched:
//! the bytes are serde_json's own.
//!
//! Byte buffers (`serde_bytes`) are written as serde_json writes them, an array of numbers
//! (`[104,105]`); a JSON string is accepted too when decoding one.

use std::fmt::Display;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant, Serializer,
};

/// A value serialized with the checks of the [module docs](self).
pub(super) struct Faithful<'a, T: ?Sized> {
    value: &'a T,
    /// The value is the content of a `Some`: it must not be written as `null`.
    in_some: bool,
}

impl<'a, T: ?Sized> Faithful<'a, T> {
    /// Checks `value` (a whole message, or an element of one).
    pub(super) fn new(value: &'a T) -> Self {
        Faithful { value, in_some: false }
    }
}

impl<T: Serialize + ?Sized> Serialize for Faithful<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Guard { inner: s, in_some: self.in_some })
    }
}

/// The serializer wrapper: checks floats and `Some`s, wraps every nested value.
struct Guard<S> {
    inner: S,
    in_some: bool,
}

impl<S: Serializer> Guard<S> {
    fn null_in_some(&self, what: &str) -> Result<(), S::Error> {
        if self.in_some {
            return Err(ser::Error::custom(format_args!(
                "JSON cannot carry `Some` of {what}: it is written as `null`, which reads back as `None`"
            )));
        }
        Ok(())
    }
}

fn not_finite<E: ser::Error>(v: impl Display) -> E {
    E::custom(format_args!("JSON cannot carry the float {v} (NaN and infinities are not JSON numbers)"))
}

/// Forwards methods whose argument is a plain value.
macro_rules! forward {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline]
        fn $method(self, v: $ty) -> Result<S::Ok, S::Error> {
            self.inner.$method(v)
        }
    )*};
}

impl<S: Serializer> Serializer for Guard<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<S::SerializeSeq>;
    type SerializeTuple = Compound<S::SerializeTuple>;
    type SerializeTupleStruct = Compound<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<S::SerializeTupleVariant>;
    type SerializeMap = Compound<S::SerializeMap>;
    type SerializeStruct = Compound<S::SerializeStruct>;
    type SerializeStructVariant = Compound<S::SerializeStructVariant>;

    forward! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_i128(i128);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_u128(u128);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
    }

    fn serialize_f32(self, v: f32) -> Result<S::Ok, S::Error> {
        if !v.is_finite() {
            return Err(not_finite(v));
        }
        self.inner.serialize_f32(v)
    }

    fn serialize_f64(self, v: f64) -> Result<S::Ok, S::Error> {
        if !v.is_finite() {
            return Err(not_finite(v));
        }
        self.inner.serialize_f64(v)
    }

    fn serialize_none(self) -> Result<S::Ok, S::Error> {
        self.null_in_some("`None` (`Some(None)`)")?;
        self.inner.serialize_none()
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.serialize_some(&Faithful { value, in_some: true })
    }

    fn serialize_unit(self) -> Result<S::Ok, S::Error> {
        self.null_in_some("`()`")?;
        self.inner.serialize_unit()
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<S::Ok, S::Error> {
        self.null_in_some(&format!("the unit struct `{name}`"))?;
        self.inner.serialize_unit_struct(name)
    }

    fn serialize_unit_variant(self, name: &'static str, index: u32, variant: &'static str) -> Result<S::Ok, S::Error> {
        self.inner.serialize_unit_variant(name, index, variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<S::Ok, S::Error> {
        // JSON writes a newtype as its content: `Some(Wrapper(None))` is `null` too.
        self.inner.serialize_newtype_struct(name, &Faithful { value, in_some: self.in_some })
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        self.inner.serialize_newtype_variant(name, index, variant, &Faithful::new(value))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.inner.serialize_seq(len).map(Compound)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.inner.serialize_tuple(len).map(Compound)
    }

    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.inner.serialize_tuple_struct(name, len).map(Compound)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.inner.serialize_tuple_variant(name, index, variant, len).map(Compound)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.inner.serialize_map(len).map(Compound)
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Self::SerializeStruct, S::Error> {
        self.inner.serialize_struct(name, len).map(Compound)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        self.inner.serialize_struct_variant(name, index, variant, len).map(Compound)
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, S::Error> {
        self.inner.collect_str(value)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A compound value (sequence, tuple, map, struct) whose elements are wrapped.
struct Compound<C>(C);

/// Implements one of serde's compound-serializer traits for [`Compound`], wrapping each
/// element; `$field` methods take a field name first.
macro_rules! compound {
    ($trait:ident, $method:ident) => {
        impl<C: $trait> $trait for Compound<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
                self.0.$method(&Faithful::new(value))
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    };
    ($trait:ident, $method:ident, field) => {
        impl<C: $trait> $trait for Compound<C> {
            type Ok = C::Ok;
            type Error = C::Error;

            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), C::Error> {
                self.0.$method(key, &Faithful::new(value))
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), C::Error> {
                self.0.skip_field(key)
            }

            fn end(self) -> Result<C::Ok, C::Error> {
                self.0.end()
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, field);
compound!(SerializeStructVariant, serialize_field, field);

impl<C: SerializeMap> SerializeMap for Compound<C> {
    type Ok = C::Ok;
    type Error = C::Error;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), C::Error> {
        self.0.serialize_key(&Faithful::new(key))
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), C::Error> {
        self.0.serialize_value(&Faithful::new(value))
    }

    fn end(self) -> Result<C::Ok, C::Error> {
        self.0.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use crate::codec::{Codec, EncodeError};

    fn json<T: Serialize>(v: &T) -> Result<String, EncodeError> {
        Codec::Json.encode(v, 1 << 20).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn nan_and_infinities_are_refused_wherever_they_are() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = json(&v).unwrap_err();
            assert!(matches!(&err, EncodeError::Serde(m) if m.contains("JSON cannot carry the float")), "{err:?}");
            assert!(json(&Some(v)).is_err());
            assert!(json(&vec![(1u8, v as f32)]).is_err());
            assert!(json(&BTreeMap::from([("k", v)])).is_err());
        }
        assert_eq!(json(&(0.5f64, -1.25f32)).unwrap(), "[0.5,-1.25]");
    }

    #[test]
    fn a_some_written_as_null_is_refused_and_other_somes_are_not() {
        #[derive(Serialize)]
        struct Unit;
        #[derive(Serialize)]
        struct Wrapper(Option<u8>);
        #[derive(Serialize)]
        enum E {
            V,
        }
        for err in [
            json(&Some(None::<u8>)).unwrap_err(),
            json(&Some(())).unwrap_err(),
            json(&Some(Unit)).unwrap_err(),
            json(&vec![Some(Wrapper(None))]).unwrap_err(),
        ] {
            assert!(matches!(&err, EncodeError::Serde(m) if m.contains("reads back as `None`")), "{err:?}");
        }
        assert_eq!(json(&Some(Some(5u8))).unwrap(), "5");
        assert_eq!(json(&Some(E::V)).unwrap(), r#""V""#);
        assert_eq!(json(&(None::<u8>, (), Some(vec![None::<u8>]))).unwrap(), "[null,null,[null]]");
        assert_eq!(json(&Some(Wrapper(Some(1)))).unwrap(), "1");
    }

    #[test]
    fn values_json_carries_are_written_as_serde_json_writes_them() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Req {
            Echo(String, #[serde(with = "serde_bytes")] Vec<u8>),
            Ping,
            Named { a: u32, b: Option<i64> },
        }
        let v = vec![Req::Echo("hi".into(), vec![104, 105]), Req::Ping, Req::Named { a: 1, b: None }];
        let ours = json(&v).unwrap();
        assert_eq!(ours, serde_json::to_string(&v).unwrap());
        assert_eq!(ours, r#"[{"Echo":["hi",[104,105]]},"Ping",{"Named":{"a":1,"b":null}}]"#);
        assert_eq!(Codec::Json.decode::<Vec<Req>>(ours.as_bytes()).unwrap(), v);
    }
}
