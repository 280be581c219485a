//! Variant positions, translated for a client built from another version of the trait
//! (service evolution, see [`crate::evolution`]).
//!
//! bincode and postcard write an enum variant as its position: a varint at the start of the
//! body of every call, one-way call, stream item and reply (the generated request and
//! response enums). JSON writes the variant's name and needs none of this. When the
//! handshake finds a client's method at another position in our enums than in its own (a
//! method was inserted or removed before it, or, for a method that takes a stream, whose
//! item variant follows every call variant, any method was added), it maps the client's
//! positions to ours ([`VariantMap`]), and the server's carrier rewrites that one varint in
//! place: in the client's frames as they arrive (its position to ours) and in our replies
//! and stream items as they leave (ours to its). A position is only mapped where both
//! encodings have the same length, so no frame, batch entry or piece changes size and
//! stream credit (counted in frame bytes) is the same on both sides; a method whose
//! positions would not fit is reported `Moved` instead.
//!
//! Why at the carrier: the engine, its fast paths for items and one-way calls in batches,
//! and the generated code then never see the client's numbering, and a connection without
//! a map pays one branch per message. Why the server: it is the side that knows both tables,
//! so a client built from any older trait needs nothing new to be served.
//!
//! What the client sends in a position it has no mapping for (a method the server reported
//! missing or changed, which a generated client never sends) is rewritten to a position the
//! server's enum does not have, so it fails to decode (`BadRequest`) rather than reaching
//! another method.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::codec::Codec;
use crate::wire::{FLAG_MORE, FLAG_OPENER, HEADER_LEN, Kind};

/// How a codec writes a variant's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// bincode's `DefaultOptions`: one byte up to 250, else a marker and 2 or 4 bytes LE.
    Bincode,
    /// postcard: LEB128, 7 bits a byte.
    Postcard,
}

impl Varint {
    /// The varint of `codec`; `None` for a codec that writes names (JSON).
    pub(crate) fn of(codec: Codec) -> Option<Varint> {
        match codec {
            Codec::Bincode => Some(Varint::Bincode),
            Codec::Postcard => Some(Varint::Postcard),
            Codec::Json => None,
        }
    }

    /// Bytes of the encoding of `v`.
    pub(crate) fn len(self, v: u32) -> usize {
        match self {
            Varint::Bincode if v <= 250 => 1,
            Varint::Bincode if v <= u32::from(u16::MAX) => 3,
            Varint::Bincode => 5,
            Varint::Postcard => match v {
                0..=0x7f => 1,
                0x80..=0x3fff => 2,
                0x4000..=0x1f_ffff => 3,
                0x20_0000..=0x0fff_ffff => 4,
                _ => 5,
            },
        }
    }

    /// The largest value encoded in `len` bytes.
    fn largest(self, len: usize) -> u32 {
        match (self, len) {
            (Varint::Bincode, 1) => 250,
            (Varint::Bincode, 3) => u32::from(u16::MAX),
            (Varint::Postcard, 1) => 0x7f,
            (Varint::Postcard, 2) => 0x3fff,
            (Varint::Postcard, 3) => 0x1f_ffff,
            (Varint::Postcard, 4) => 0x0fff_ffff,
            _ => u32::MAX,
        }
    }

    /// The value at the start of `b` and its length; `None` if cut off or not a u32.
    fn read(self, b: &[u8]) -> Option<(u32, usize)> {
        match self {
            Varint::Bincode => match *b.first()? {
                n @ 0..=250 => Some((u32::from(n), 1)),
                251 => Some((u32::from(u16::from_le_bytes(*b.get(1..)?.first_chunk()?)), 3)),
                252 => Some((u32::from_le_bytes(*b.get(1..)?.first_chunk()?), 5)),
                _ => None,
            },
            Varint::Postcard => {
                let mut v = 0u32;
                for (i, byte) in b.iter().take(5).enumerate() {
                    v |= u32::from(byte & 0x7f) << (7 * i);
                    if byte & 0x80 == 0 {
                        return Some((v, i + 1));
                    }
                }
                None
            }
        }
    }

    /// Writes `v` over `out`, which is exactly [`len`](Self::len)`(v)` bytes.
    fn write(self, v: u32, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.len(v));
        match (self, out.len()) {
            (Varint::Bincode, 1) => out[0] = v as u8,
            (Varint::Bincode, 3) => {
                out[0] = 251;
                out[1..].copy_from_slice(&(v as u16).to_le_bytes());
            }
            (Varint::Bincode, _) => {
                out[0] = 252;
                out[1..].copy_from_slice(&v.to_le_bytes());
            }
            (Varint::Postcard, n) => {
                let mut v = v;
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = (v & 0x7f) as u8 | if i + 1 < n { 0x80 } else { 0 };
                    v >>= 7;
                }
            }
        }
    }
}

/// Marks a position with no counterpart.
const NONE: u32 = u32::MAX;

/// The positions of one connection's client in our wire enums, and back.
#[derive(Debug)]
pub(crate) struct VariantMap {
    varint: Varint,
    /// For each of the client's request variants (calls, then items), ours, or `NONE`.
    requests: Box<[u32]>,
    /// For each of our response variants, the client's, or `NONE`.
    responses: Box<[u32]>,
    /// How many request variants our enum has.
    our_requests: u32,
}

impl VariantMap {
    /// An empty map: `client_requests` request variants on the client's side, and
    /// `our_requests` and `our_responses` on ours.
    pub(crate) fn new(varint: Varint, client_requests: usize, our_requests: usize, our_responses: usize) -> Self {
        VariantMap {
            varint,
            requests: vec![NONE; client_requests].into(),
            responses: vec![NONE; our_responses].into(),
            our_requests: u32::try_from(our_requests).unwrap_or(u32::MAX),
        }
    }

    /// True if the client's request position `client` can be carried as our `ours` (the
    /// same encoded length).
    pub(crate) fn fits(&self, client: usize, ours: usize) -> bool {
        match (u32::try_from(client), u32::try_from(ours)) {
            (Ok(c), Ok(o)) => c != NONE && o != NONE && self.varint.len(c) == self.varint.len(o),
            _ => false,
        }
    }

    /// Maps the client's request variant `client` to our `ours` (both [`fits`](Self::fits)).
    pub(crate) fn request(&mut self, client: usize, ours: usize) {
        if let Some(slot) = self.requests.get_mut(client) {
            *slot = ours as u32;
        }
    }

    /// Maps our response variant `ours` to the client's `client` (both fit).
    pub(crate) fn response(&mut self, ours: usize, client: usize) {
        if let Some(slot) = self.responses.get_mut(ours) {
            *slot = client as u32;
        }
    }

    /// True if every mapped position is the same on both sides (nothing to rewrite; a
    /// position the client may not use is then refused by the client, as without a map).
    /// The client's request places as ours, and our response places as the client's.
    #[cfg(test)]
    pub(crate) fn places(&self) -> (Vec<Option<u32>>, Vec<Option<u32>>) {
        let show = |map: &[u32]| map.iter().map(|&v| (v != NONE).then_some(v)).collect();
        (show(&self.requests), show(&self.responses))
    }

    pub(crate) fn is_identity(&self) -> bool {
        let same = |map: &[u32]| map.iter().enumerate().all(|(i, &v)| v == NONE || v as usize == i);
        same(&self.requests) && same(&self.responses)
    }
}

/// One connection's translation: the map, and which items are being sent in pieces (a
/// piece only holds a position if it is the first of its item).
#[derive(Debug)]
pub(crate) struct Translator {
    map: Arc<VariantMap>,
    /// Exchanges (and direction: `true` for the client's stream) whose item is part sent.
    mid_item: HashSet<(bool, u64)>,
}

/// Most items tracked mid-pieces at once. A conforming client has at most one per stream
/// it sends; beyond this (a peer sending first pieces for exchanges it never opened) new
/// ones are not tracked, which can only misplace that peer's own pieces, which the engine
/// drops anyway for an exchange that is not open.
const MAX_MID_ITEMS: usize = 4096;

/// One rewrite: the varint at `at`, which becomes `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Edit {
    at: usize,
    len: usize,
    value: u32,
}

impl Translator {
    pub(crate) fn new(map: Arc<VariantMap>) -> Self {
        Translator { map, mid_item: HashSet::new() }
    }

    /// An inbound lone frame: a rewritten copy if it needs one.
    pub(crate) fn inbound(&mut self, frame: &[u8]) -> Option<BytesMut> {
        let edit = self.edit(frame, true)?;
        let mut copy = BytesMut::from(frame);
        self.apply(&mut copy, edit);
        Some(copy)
    }

    /// The body of an inbound `Batch` (after its header), rewritten in place. A malformed
    /// batch is left for the engine to refuse from where it stops making sense.
    pub(crate) fn inbound_batch(&mut self, body: &mut [u8]) {
        let mut at = 0;
        while let Some(Ok(range)) = crate::wire::next_in_batch(body, &mut at) {
            if let Some(edit) = self.edit(&body[range.clone()], true) {
                self.apply(&mut body[range], edit);
            }
        }
    }

    /// An outbound message (a frame, or a batch of them): a rewritten copy if it needs one.
    pub(crate) fn outbound(&mut self, message: &Bytes) -> Option<Bytes> {
        let mut edits = Vec::new();
        if message.len() >= HEADER_LEN && message[0] == Kind::Batch.code() {
            let body = &message[HEADER_LEN..];
            let mut at = 0;
            while let Some(Ok(range)) = crate::wire::next_in_batch(body, &mut at) {
                if let Some(edit) = self.edit(&body[range.clone()], false) {
                    edits.push(Edit { at: HEADER_LEN + range.start + edit.at, ..edit });
                }
            }
        } else if let Some(edit) = self.edit(message, false) {
            edits.push(edit);
        }
        if edits.is_empty() {
            return None;
        }
        let mut copy = BytesMut::from(&message[..]);
        for edit in edits {
            self.apply(&mut copy, edit);
        }
        Some(copy.freeze())
    }

    fn apply(&self, frame: &mut [u8], edit: Edit) {
        self.map.varint.write(edit.value, &mut frame[edit.at..edit.at + edit.len]);
    }

    /// What to rewrite in one frame (`inbound`: from the client), keeping track of pieces.
    fn edit(&mut self, frame: &[u8], inbound: bool) -> Option<Edit> {
        let head = frame.first_chunk::<HEADER_LEN>()?;
        let kind = Kind::from_code(head[0])?;
        let opener = head[1] & FLAG_OPENER != 0;
        let id = u64::from_le_bytes(head[2..10].try_into().expect("8 bytes"));
        match (inbound, opener, kind) {
            // The client's calls and items: its positions to ours.
            (true, true, Kind::Call) => self.request(frame, HEADER_LEN + 8),
            (true, true, Kind::OneWay | Kind::UpItem) => self.request(frame, HEADER_LEN),
            (true, true, Kind::Piece) => self.piece(frame, id, true, head[1] & FLAG_MORE != 0),
            (true, true, Kind::Cancel) => {
                self.forget(id);
                None
            }
            // Our answers and items: our positions to the client's. (Frames we send as an
            // opener are callback calls, whose bodies are the callback trait's.)
            (false, false, Kind::Reply) => {
                self.forget(id);
                self.response(frame, HEADER_LEN)
            }
            (false, false, Kind::DownItem) => self.response(frame, HEADER_LEN),
            (false, false, Kind::Piece) => self.piece(frame, id, false, head[1] & FLAG_MORE != 0),
            (false, false, Kind::Error | Kind::TooLarge | Kind::DownEnd) => {
                self.forget(id);
                None
            }
            _ => None,
        }
    }

    /// A piece of an item of exchange `id` (`up`: the client's stream): only its item's
    /// first piece holds the position, after the item frame's own header.
    fn piece(&mut self, frame: &[u8], id: u64, up: bool, more: bool) -> Option<Edit> {
        let first = !self.mid_item.contains(&(up, id));
        if more {
            if first && self.mid_item.len() < MAX_MID_ITEMS {
                self.mid_item.insert((up, id));
            }
        } else if !first {
            self.mid_item.remove(&(up, id));
        }
        if !first {
            return None;
        }
        // The item frame this piece starts: its header must name this exchange.
        let item = &frame[HEADER_LEN..];
        let head = item.first_chunk::<HEADER_LEN>()?;
        let kind = if up { Kind::UpItem } else { Kind::DownItem };
        if head[0] != kind.code() || head[2..10] != id.to_le_bytes() {
            return None;
        }
        let edit = if up { self.request(item, HEADER_LEN) } else { self.response(item, HEADER_LEN) }?;
        Some(Edit { at: HEADER_LEN + edit.at, ..edit })
    }

    fn forget(&mut self, id: u64) {
        if !self.mid_item.is_empty() {
            self.mid_item.remove(&(true, id));
            self.mid_item.remove(&(false, id));
        }
    }

    /// The client's request position at `at` in `frame`, as ours.
    fn request(&self, frame: &[u8], at: usize) -> Option<Edit> {
        let varint = self.map.varint;
        let (v, len) = varint.read(frame.get(at..)?)?;
        let value = match self.map.requests.get(v as usize) {
            Some(&ours) if ours != NONE => ours,
            // Not one the client may send: a position our enum does not have, of the same
            // length, if there is one.
            _ => Some(varint.largest(len)).filter(|&x| x >= self.map.our_requests)?,
        };
        (value != v && varint.len(value) == len).then_some(Edit { at, len, value })
    }

    /// Our response position at `at` in `frame`, as the client's.
    fn response(&self, frame: &[u8], at: usize) -> Option<Edit> {
        let varint = self.map.varint;
        let (v, len) = varint.read(frame.get(at..)?)?;
        let value = *self.map.responses.get(v as usize).filter(|&&c| c != NONE)?;
        (value != v && varint.len(value) == len).then_some(Edit { at, len, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Old {
        A(u8),
        B(String),
        BItem(u64),
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum New {
        X(bool),
        A(u8),
        B(String),
        Y,
        BItem(u64),
    }

    /// The map a handshake would build for `Old` (the client) against `New` (ours): A 0 -> 1,
    /// B 1 -> 2, BItem 2 -> 4; responses mirror the calls.
    fn map(varint: Varint) -> Arc<VariantMap> {
        let mut m = VariantMap::new(varint, 3, 5, 4);
        for (c, o) in [(0, 1), (1, 2), (2, 4)] {
            assert!(m.fits(c, o));
            m.request(c, o);
        }
        m.response(1, 0);
        m.response(2, 1);
        assert!(!m.is_identity());
        Arc::new(m)
    }

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for varint in [Varint::Bincode, Varint::Postcard] {
            let codec = if varint == Varint::Bincode { Codec::Bincode } else { Codec::Postcard };
            for v in [0, 1, 127, 128, 250, 251, 16383, 16384, 65535, 65536, 0x1f_ffff, 0x20_0000, u32::MAX] {
                let mut out = vec![0; varint.len(v)];
                varint.write(v, &mut out);
                // The codec's own encoding of a u32 variant position is the same bytes.
                let reference = match codec {
                    Codec::Bincode => {
                        use bincode::Options;
                        bincode::DefaultOptions::new().serialize(&v).unwrap()
                    }
                    _ => postcard::to_allocvec(&v).unwrap(),
                };
                assert_eq!(out, reference, "{varint:?} {v}");
                assert_eq!(varint.read(&out), Some((v, out.len())));
                assert_eq!(varint.largest(out.len()).max(v), varint.largest(out.len()));
            }
        }
    }

    #[test]
    fn a_clients_calls_are_read_at_our_positions_and_our_replies_at_its() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let mut t = Translator::new(map(Varint::of(codec).unwrap()));
            let call =
                Frame::<Old, ()>::Call { id: 7, timeout_us: 5, body: Old::B("hi".into()) }.encode(codec, 1 << 20);
            let read = t.inbound(&call.unwrap()).unwrap();
            assert_eq!(
                Frame::<New, ()>::decode(codec, &read).unwrap(),
                Frame::Call { id: 7, timeout_us: 5, body: New::B("hi".into()) }
            );
            let item = Frame::<Old, ()>::UpItem { id: 7, body: Old::BItem(9) }.encode(codec, 1 << 20).unwrap();
            let read = t.inbound(&item).unwrap();
            assert_eq!(Frame::<New, ()>::decode(codec, &read).unwrap(), Frame::UpItem { id: 7, body: New::BItem(9) });
            let reply = Frame::<(), New>::Reply { id: 7, body: New::B("yo".into()) }.encode(codec, 1 << 20).unwrap();
            let sent = t.outbound(&reply).unwrap();
            assert_eq!(
                Frame::<(), Old>::decode(codec, &sent).unwrap(),
                Frame::Reply { id: 7, body: Old::B("yo".into()) }
            );
        }
    }

    #[test]
    fn frames_at_the_same_position_and_callback_frames_are_left_alone() {
        let codec = Codec::Bincode;
        let mut m = VariantMap::new(Varint::Bincode, 2, 3, 3);
        m.request(0, 0);
        m.request(1, 2);
        m.response(0, 0);
        let mut t = Translator::new(Arc::new(m));
        let same = Frame::<Old, ()>::OneWay { id: 1, body: Old::A(3) }.encode(codec, 1 << 20).unwrap();
        assert!(t.inbound(&same).is_none());
        let reply = Frame::<(), Old>::Reply { id: 1, body: Old::A(3) }.encode(codec, 1 << 20).unwrap();
        assert!(t.outbound(&reply).is_none());
        // A callback call we open, and the client's reply to it, carry another trait's enums.
        let callback = Frame::<Old, ()>::Call { id: 2, timeout_us: 1, body: Old::B("cb".into()) };
        assert!(t.outbound(&callback.encode(codec, 1 << 20).unwrap()).is_none());
        let answer = Frame::<(), Old>::Reply { id: 2, body: Old::B("cb".into()) }.encode(codec, 1 << 20).unwrap();
        assert!(t.inbound(&answer).is_none());
    }

    #[test]
    fn a_position_the_client_may_not_send_becomes_one_we_do_not_have() {
        let codec = Codec::Postcard;
        let mut m = VariantMap::new(Varint::Postcard, 3, 5, 4);
        m.request(0, 1);
        let mut t = Translator::new(Arc::new(m));
        // Position 1 is one the client's `B`, which we do not serve as it knows it.
        let call = Frame::<Old, ()>::Call { id: 3, timeout_us: 5, body: Old::B("x".into()) }.encode(codec, 1 << 20);
        let read = t.inbound(&call.unwrap()).unwrap();
        match Frame::<New, ()>::decode(codec, &read) {
            Err(crate::wire::FrameError::Body { id: 3, .. }) => {}
            other => panic!("expected a body that does not decode, got {other:?}"),
        }
    }

    #[test]
    fn batches_are_rewritten_entry_by_entry_in_place_and_on_the_way_out_by_copy() {
        let codec = Codec::Bincode;
        let mut t = Translator::new(map(Varint::Bincode));
        let frames = [
            Frame::<Old, ()>::OneWay { id: 1, body: Old::A(1) }.encode(codec, 1 << 20).unwrap(),
            Frame::<Old, ()>::Cancel { id: 9 }.encode(codec, 1 << 20).unwrap(),
            Frame::<Old, ()>::UpItem { id: 2, body: Old::BItem(5) }.encode(codec, 1 << 20).unwrap(),
        ];
        let mut body = BytesMut::new();
        for f in &frames {
            body.extend_from_slice(&(f.len() as u32).to_le_bytes());
            body.extend_from_slice(f);
        }
        let mut inbound = body.clone();
        t.inbound_batch(&mut inbound);
        let mut batch = BytesMut::from(&[Kind::Batch.code(), 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        batch.extend_from_slice(&inbound);
        let read: Vec<_> = crate::wire::split_batch(&batch)
            .unwrap()
            .into_iter()
            .map(|f| Frame::<New, ()>::decode(codec, f).unwrap())
            .collect();
        assert_eq!(
            read,
            [
                Frame::OneWay { id: 1, body: New::A(1) },
                Frame::Cancel { id: 9 },
                Frame::UpItem { id: 2, body: New::BItem(5) }
            ]
        );
        // Outbound: the same batch of our replies, read by the client.
        let replies = [
            Frame::<(), New>::Reply { id: 1, body: New::A(1) }.encode(codec, 1 << 20).unwrap(),
            Frame::<(), New>::DownItem { id: 2, body: New::B("s".into()) }.encode(codec, 1 << 20).unwrap(),
        ];
        let mut out = BytesMut::from(&[Kind::Batch.code(), 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        for f in &replies {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        let out = out.freeze();
        let sent = t.outbound(&out).unwrap();
        let read: Vec<_> = crate::wire::split_batch(&sent)
            .unwrap()
            .into_iter()
            .map(|f| Frame::<(), Old>::decode(codec, f).unwrap())
            .collect();
        assert_eq!(
            read,
            [Frame::Reply { id: 1, body: Old::A(1) }, Frame::DownItem { id: 2, body: Old::B("s".into()) }]
        );
    }

    #[test]
    fn only_the_first_piece_of_an_item_is_rewritten() {
        let codec = Codec::Postcard;
        let mut t = Translator::new(map(Varint::Postcard));
        let item = Frame::<Old, ()>::UpItem { id: 4, body: Old::BItem(77) }.encode(codec, 1 << 20).unwrap();
        let piece = |bytes: Bytes, more: bool| {
            Frame::<(), ()>::Piece { id: 4, from_opener: true, more, bytes }.encode(codec, 1 << 20).unwrap()
        };
        let first = t.inbound(&piece(item.slice(..HEADER_LEN + 1), true)).expect("the first piece is rewritten");
        // A later piece that happens to start like an item frame is data: left alone.
        assert!(t.inbound(&piece(item.clone(), true)).is_none());
        assert!(t.inbound(&piece(item.slice(HEADER_LEN + 1..), false)).is_none());
        let mut whole = first[HEADER_LEN..].to_vec();
        whole.extend_from_slice(&item[HEADER_LEN + 1..]);
        assert_eq!(Frame::<New, ()>::decode(codec, &whole).unwrap(), Frame::UpItem { id: 4, body: New::BItem(77) });
        // The item is over: the next piece starts a new one.
        assert!(t.inbound(&piece(item.slice(..HEADER_LEN + 1), true)).is_some());
        // A cancel forgets a half-sent item.
        t.inbound(&Frame::<Old, ()>::Cancel { id: 4 }.encode(codec, 1 << 20).unwrap());
        assert!(t.mid_item.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_change_a_frames_length() {
        let mut t = Translator::new(map(Varint::Bincode));
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            let len = (next() % 48) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Often a real kind and flags, so that the interesting paths are reached.
            if len > 1 && round % 2 == 0 {
                bytes[0] = [1, 2, 3, 4, 8, 9, 15, 16][(next() % 8) as usize];
                bytes[1] = (next() % 4) as u8;
            }
            if let Some(copy) = t.inbound(&bytes) {
                assert_eq!(copy.len(), bytes.len());
            }
            let mut batch = bytes.clone();
            t.inbound_batch(&mut batch);
            assert_eq!(batch.len(), bytes.len());
            if let Some(copy) = t.outbound(&Bytes::from(bytes.clone())) {
                assert_eq!(copy.len(), bytes.len());
            }
        }
        assert!(t.mid_item.len() <= MAX_MID_ITEMS);
    }
}
