//! The service fingerprint: FNV-1a 64 over a canonical text of the signatures.

use std::fmt::Write as _;

use quote::ToTokens;

/// FNV-1a 64's offset basis: the hash of no bytes.
const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_extend(OFFSET, bytes)
}

/// FNV-1a 64 of `a` followed by `bytes`, given `state`, the hash of `a`: the hash runs byte
/// by byte, so the canonical text can be hashed in pieces. `rpc_core::__private::fingerprint_extend`
/// is the same function, run where the compiler knows which methods are compiled in.
pub(crate) fn fnv1a64_extend(state: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(state, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A type's spelling with all whitespace removed.
pub(crate) fn type_text(ty: &impl ToTokens) -> String {
    ty.to_token_stream().to_string().split_whitespace().collect()
}

/// One method as it enters the canonical text.
pub(crate) struct MethodText {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    pub(crate) output: String,
}

/// The start of the canonical text: `{service}:`.
pub(crate) fn prefix(service: &str) -> String {
    format!("{service}:")
}

impl MethodText {
    /// One method's piece of the canonical text: `name(arg,arg)->ret;`.
    pub(crate) fn text(&self) -> String {
        let mut text = String::new();
        // Writing to a `String` cannot fail.
        let _ = write!(text, "{}({})->{};", self.name, self.args.join(","), self.output);
        text
    }
}

/// `{service}:` then `name(arg,arg)->ret;` per method, in declaration order.
#[cfg(test)]
pub(crate) fn canonical(service: &str, methods: &[MethodText]) -> String {
    methods.iter().fold(prefix(service), |text, m| text + &m.text())
}

/// The fingerprint of a service whose methods are all compiled in. The generated code
/// computes the same value in a `const`, from [`prefix`]'s hash and each compiled-in
/// method's [`MethodText::text`] (see `expand.rs`).
#[cfg(test)]
pub(crate) fn fingerprint(service: &str, methods: &[MethodText]) -> u64 {
    methods.iter().fold(fnv1a64(prefix(service).as_bytes()), |fp, m| fnv1a64_extend(fp, m.text().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> String {
        type_text(&syn::parse_str::<syn::Type>(s).unwrap())
    }

    fn queues(arg: &str, ret: &str) -> u64 {
        fingerprint(
            "WorkQueues",
            &[
                MethodText { name: "create".into(), args: vec![ty(arg)], output: ty(ret) },
                MethodText { name: "list".into(), args: vec![], output: ty("Vec<QueueInfo>") },
            ],
        )
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn canonical_text() {
        let m = [
            MethodText {
                name: "create".into(),
                args: vec![ty("String"), ty("u8")],
                output: ty("Result<QueueInfo, QueueError>"),
            },
            MethodText { name: "list".into(), args: vec![], output: ty("()") },
        ];
        assert_eq!(
            canonical("WorkQueues", &m),
            "WorkQueues:create(String,u8)->Result<QueueInfo,QueueError>;list()->();"
        );
    }

    #[test]
    fn hashing_in_pieces_is_hashing_the_whole_text() {
        let m = [
            MethodText { name: "create".into(), args: vec![ty("String")], output: ty("Result<QueueInfo, QueueError>") },
            MethodText { name: "list".into(), args: vec![], output: ty("Vec<QueueInfo>") },
        ];
        assert_eq!(fingerprint("WorkQueues", &m), fnv1a64(canonical("WorkQueues", &m).as_bytes()));
        assert_eq!(fnv1a64_extend(fnv1a64(b"foo"), b"bar"), fnv1a64(b"foobar"));
    }

    #[test]
    fn stable_value() {
        // Pinned: changing this value breaks every deployed client/server pair.
        assert_eq!(queues("String", "Result<QueueInfo, QueueError>"), 0x02e1_8102_3a95_4e71);
    }

    #[test]
    fn ignores_whitespace() {
        assert_eq!(ty("Result < QueueInfo ,\n QueueError >"), "Result<QueueInfo,QueueError>");
        assert_eq!(ty("std :: vec :: Vec<u8>"), "std::vec::Vec<u8>");
        assert_eq!(
            queues("String", "Result<QueueInfo,QueueError>"),
            queues(" String ", "Result< QueueInfo , QueueError >")
        );
    }

    #[test]
    fn changes_with_signature() {
        let base = queues("String", "Result<QueueInfo, QueueError>");
        assert_ne!(base, queues("u32", "Result<QueueInfo, QueueError>"));
        assert_ne!(base, queues("String", "Result<QueueInfo, String>"));
        assert_ne!(base, fingerprint("Other", &[]));
    }
}
