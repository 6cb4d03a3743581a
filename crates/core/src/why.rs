//! Why a value did not encode or decode, in the words of the code that refused it.
//!
//! postcard drops the message of every error serde code raises itself (`Error::custom`,
//! `invalid_value`, `missing_field`, ...): a `Deserialize` impl that says "sevens are not
//! allowed" reaches the user as "Serde Deserialization Error". When postcard reports such an
//! error, the value is encoded or decoded a second time here, through adapters whose error
//! type keeps the message, and that message is reported. Only failures pay for this: the
//! first pass is postcard's own.
//!
//! Decoding goes through postcard's deserializer again, wrapped at every level (visitors,
//! sequences, maps, enums, seeds), so the same bytes reach the same refusal; the message is
//! carried across postcard's frames in a thread-local, since postcard's error type cannot
//! hold it. Encoding runs the value's `Serialize` against a serializer that accepts
//! everything and writes nothing, so the only error it can meet is the value's own.

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{self, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;

/// An error that keeps its message.
#[derive(Debug)]
pub(crate) struct Kept(pub String);

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Kept {}

impl de::Error for Kept {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Kept(msg.to_string())
    }
}

impl ser::Error for Kept {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Kept(msg.to_string())
    }
}

thread_local! {
    /// The message of an error on its way out through postcard's frames.
    static CARRIED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Our error, going into postcard's: its message waits in `CARRIED`.
fn carry<E: de::Error>(k: Kept) -> E {
    let e = E::custom(&k.0);
    CARRIED.with(|c| *c.borrow_mut() = Some(k.0));
    e
}

/// postcard's error, coming out: the message it carried, or its own.
fn kept(e: impl fmt::Display) -> Kept {
    CARRIED.with(|c| c.borrow_mut().take()).map(Kept).unwrap_or_else(|| Kept(e.to_string()))
}

/// Decodes `bytes` as a `T` through the adapters; the error's own message if it fails.
pub(crate) fn decode_message<T: de::DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    CARRIED.with(|c| c.borrow_mut().take());
    let mut d = postcard::Deserializer::from_bytes(bytes);
    let r = T::deserialize(De(&mut d));
    CARRIED.with(|c| c.borrow_mut().take());
    r.err().map(|k| k.0)
}

/// Runs `v`'s `Serialize` against a serializer that accepts everything; its own error's
/// message if it fails.
pub(crate) fn encode_message<T: Serialize + ?Sized>(v: &T) -> Option<String> {
    v.serialize(Null).err().map(|k| k.0)
}

struct De<D>(D);

macro_rules! forward_de {
    ($($name:ident $(, $arg:ident : $ty:ty)*;)*) => {
        $(
            fn $name<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Kept> {
                self.0.$name($($arg,)* Vis(visitor)).map_err(kept)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for De<D> {
    type Error = Kept;
    forward_de! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32;
        deserialize_i64; deserialize_i128; deserialize_u8; deserialize_u16; deserialize_u32;
        deserialize_u64; deserialize_u128; deserialize_f32; deserialize_f64; deserialize_char;
        deserialize_str; deserialize_string; deserialize_bytes; deserialize_byte_buf;
        deserialize_option; deserialize_unit; deserialize_unit_struct, name: &'static str;
        deserialize_newtype_struct, name: &'static str; deserialize_seq;
        deserialize_tuple, len: usize; deserialize_tuple_struct, name: &'static str, len: usize;
        deserialize_map; deserialize_struct, name: &'static str, fields: &'static [&'static str];
        deserialize_enum, name: &'static str, variants: &'static [&'static str];
        deserialize_identifier; deserialize_ignored_any;
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

struct Vis<V>(V);

macro_rules! forward_visit {
    ($($name:ident($ty:ty);)*) => {
        $(
            fn $name<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.0.$name::<Kept>(v).map_err(carry)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Vis<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none::<Kept>().map_err(carry)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit::<Kept>().map_err(carry)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(De(d)).map_err(carry)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(De(d)).map_err(carry)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Seq(a)).map_err(carry)
    }
    fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Map(a)).map_err(carry)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Enum(a)).map_err(carry)
    }
}

struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(De(d)).map_err(carry)
    }
}

struct Seq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<A> {
    type Error = Kept;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Kept> {
        self.0.next_element_seed(Seed(seed)).map_err(kept)
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Map<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<A> {
    type Error = Kept;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Kept> {
        self.0.next_key_seed(Seed(seed)).map_err(kept)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Kept> {
        self.0.next_value_seed(Seed(seed)).map_err(kept)
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

struct Enum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<A> {
    type Error = Kept;
    type Variant = Variant<A::Variant>;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), Kept> {
        self.0.variant_seed(Seed(seed)).map(|(v, a)| (v, Variant(a))).map_err(kept)
    }
}

struct Variant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<A> {
    type Error = Kept;
    fn unit_variant(self) -> Result<(), Kept> {
        self.0.unit_variant().map_err(kept)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Kept> {
        self.0.newtype_variant_seed(Seed(seed)).map_err(kept)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Kept> {
        self.0.tuple_variant(len, Vis(visitor)).map_err(kept)
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Kept> {
        self.0.struct_variant(fields, Vis(visitor)).map_err(kept)
    }
}

/// Accepts every value and writes nothing.
struct Null;

macro_rules! null_ok {
    ($($name:ident($ty:ty);)*) => {
        $(
            fn $name(self, _: $ty) -> Result<(), Kept> {
                Ok(())
            }
        )*
    };
}

impl Serializer for Null {
    type Ok = ();
    type Error = Kept;
    type SerializeSeq = Null;
    type SerializeTuple = Null;
    type SerializeTupleStruct = Null;
    type SerializeTupleVariant = Null;
    type SerializeMap = Null;
    type SerializeStruct = Null;
    type SerializeStructVariant = Null;
    null_ok! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_unit_struct(&'static str);
    }
    fn serialize_none(self) -> Result<(), Kept> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Kept> {
        v.serialize(Null)
    }
    fn serialize_unit(self) -> Result<(), Kept> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Kept> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Kept> {
        v.serialize(Null)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), Kept> {
        v.serialize(Null)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_tuple(self, _: usize) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Null, Kept> {
        Ok(Null)
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, _: &'static str, _: usize) -> Result<Null, Kept> {
        Ok(Null)
    }
}

macro_rules! null_compound {
    ($($tr:ident :: $m:ident;)*) => {
        $(
            impl ser::$tr for Null {
                type Ok = ();
                type Error = Kept;
                fn $m<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Kept> {
                    v.serialize(Null)
                }
                fn end(self) -> Result<(), Kept> {
                    Ok(())
                }
            }
        )*
    };
}

null_compound! {
    SerializeSeq::serialize_element; SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field; SerializeTupleVariant::serialize_field;
}

impl ser::SerializeMap for Null {
    type Ok = ();
    type Error = Kept;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Kept> {
        k.serialize(Null)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Kept> {
        v.serialize(Null)
    }
    fn end(self) -> Result<(), Kept> {
        Ok(())
    }
}

macro_rules! null_struct {
    ($($tr:ident;)*) => {
        $(
            impl ser::$tr for Null {
                type Ok = ();
                type Error = Kept;
                fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> Result<(), Kept> {
                    v.serialize(Null)
                }
                fn end(self) -> Result<(), Kept> {
                    Ok(())
                }
            }
        )*
    };
}

null_struct! { SerializeStruct; SerializeStructVariant; }

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(serde::Serialize, Deserialize, Debug)]
    struct Picky {
        name: String,
        #[serde(deserialize_with = "no_sevens")]
        v: Vec<u32>,
        e: Option<Inner>,
    }

    #[derive(serde::Serialize, Deserialize, Debug)]
    enum Inner {
        A(u8),
        B { x: i64 },
    }

    fn no_sevens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let v = Vec::<u32>::deserialize(d)?;
        match v.iter().position(|x| *x == 7) {
            Some(i) => Err(de::Error::custom(format!("element {i} is a seven, and sevens are not allowed"))),
            None => Ok(v),
        }
    }

    struct Refuses;
    impl serde::Serialize for Refuses {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("this value cannot be sent"))
        }
    }

    #[test]
    fn the_refusing_codes_own_message_is_recovered() {
        let ok = Picky { name: "n".into(), v: vec![1, 2], e: Some(Inner::B { x: -4 }) };
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(decode_message::<Picky>(&bytes), None, "a good value decodes through the adapters");
        let bad = Picky { name: "n".into(), v: vec![1, 7], e: Some(Inner::A(3)) };
        let bytes = postcard::to_allocvec(&bad).unwrap();
        // postcard alone loses it...
        assert_eq!(postcard::from_bytes::<Picky>(&bytes).unwrap_err().to_string(), "Serde Deserialization Error");
        // ...the second pass finds it.
        assert_eq!(decode_message::<Picky>(&bytes).unwrap(), "element 1 is a seven, and sevens are not allowed");
        // postcard's own errors keep postcard's words.
        assert!(decode_message::<Picky>(&bytes[..3]).is_some());
        assert_eq!(encode_message(&Refuses).unwrap(), "this value cannot be sent");
        assert_eq!(encode_message(&ok), None);
    }
}
