//! Hostile frames against the decode budget, with the heap measured: a counting global
//! allocator (this test binary's own) records what each decode allocates on its thread.
//!
//! Found by an attack: before the budget, 1 MiB of zeros decoded as
//! `Vec<Option<[u8; 1000]>>` took over 1 GiB, a few bytes declaring a `Vec<()>` of 2^60
//! elements spun forever, and a deep `Tree` overflowed the stack.

// The counting allocator is the one `unsafe` here: `GlobalAlloc` is an unsafe trait, and
// every method only forwards to `System` with the caller's own arguments.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use rpc_core::codec::{Codec, DECODE_BASE, DECODE_RATIO};
use serde::{Deserialize, Serialize};

/// Counts the bytes live on each thread while that thread measures.
struct Counting;

/// Per thread: measuring, bytes live since measuring began, peak of that, and peak
/// counting a reallocation's old and new block as both live (a copying `realloc`).
#[derive(Clone, Copy)]
struct Counters {
    on: bool,
    live: isize,
    peak: isize,
    peak_copying: isize,
}

thread_local! {
    // `const` and no destructor: reading it never allocates, even from inside the allocator.
    static COUNTERS: Cell<Counters> =
        const { Cell::new(Counters { on: false, live: 0, peak: 0, peak_copying: 0 }) };
}

fn count(grow: isize, transient: isize) {
    let _ = COUNTERS.try_with(|c| {
        let mut n = c.get();
        if n.on {
            n.peak_copying = n.peak_copying.max(n.live + transient);
            n.live += grow;
            n.peak = n.peak.max(n.live);
            c.set(n);
        }
    });
}

// SAFETY: every method forwards to `System` with the arguments it was given.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, layout.size() as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, layout.size() as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), 0);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize, new_size as isize);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What decoding one frame allocated on this thread.
#[derive(Debug)]
struct Heap {
    /// Peak bytes live at once (a `realloc` is one block changing size).
    peak: usize,
    /// Peak counting both blocks of every `realloc` (an upper bound when it copies).
    peak_copying: usize,
}

/// Runs `decode` on this thread and measures its heap.
fn measure<R>(decode: impl FnOnce() -> R) -> (R, Heap) {
    COUNTERS.with(|c| c.set(Counters { on: true, live: 0, peak: 0, peak_copying: 0 }));
    let r = decode();
    let n = COUNTERS.with(|c| {
        let n = c.get();
        c.set(Counters { on: false, ..n });
        n
    });
    (r, Heap { peak: n.peak as usize, peak_copying: n.peak_copying as usize })
}

const CODECS: [Codec; 2] = [Codec::Bincode, Codec::Postcard];

const MIB: usize = 1 << 20;

fn budget(frame: &[u8]) -> usize {
    DECODE_RATIO * frame.len() + DECODE_BASE
}

/// Asserts `heap` within 2x `frame`'s budget (a `Vec` grows by doubling), and within 3x
/// counting a copying `realloc`'s two blocks.
#[track_caller]
fn assert_within_budget(what: &str, frame: &[u8], heap: &Heap) {
    let budget = budget(frame);
    println!(
        "{what}: {} B frame, budget {budget} B, heap peak {} B ({} B counting realloc copies)",
        frame.len(),
        heap.peak,
        heap.peak_copying
    );
    assert!(heap.peak <= 2 * budget, "{what}: peak {} B over 2x the {budget} B budget", heap.peak);
    assert!(heap.peak_copying <= 3 * budget, "{what}: peak {} B over 3x the {budget} B budget", heap.peak_copying);
}

/// The encoding of a declared length `n`: a varint, as a u64 is, in both codecs.
fn length(c: Codec, n: u64) -> Vec<u8> {
    c.encode(&n, 16).unwrap().to_vec()
}

/// A frame of exactly `size` bytes: a sequence whose elements are one zero byte each, as
/// many as fit after its length.
fn zeros_frame(c: Codec, size: usize) -> Vec<u8> {
    let mut n = size as u64;
    loop {
        let prefix = length(c, n);
        if prefix.len() + n as usize == size {
            let mut frame = prefix;
            frame.resize(size, 0);
            return frame;
        }
        n -= 1;
    }
}

#[track_caller]
fn assert_budget_error(err: &str, frame: &[u8]) {
    let expected = format!(
        "the message would allocate more than {} bytes to decode (limit: 16x its {}-byte size + 64 KiB)",
        budget(frame),
        frame.len()
    );
    assert_eq!(err, expected);
}

/// 1000 bytes inline (serde implements arrays up to 32 elements).
type Kilo = [[[u8; 10]; 10]; 10];

#[test]
fn a_mib_of_zeros_as_vec_of_big_options_fails_with_the_budget_error_within_2x_the_budget_of_heap() {
    for c in CODECS {
        let frame = zeros_frame(c, MIB);
        let (r, heap) = measure(|| c.decode::<Vec<Option<Kilo>>>(&frame));
        assert_budget_error(&r.unwrap_err(), &frame);
        assert_within_budget(&format!("{c:?} 1 MiB of None as Vec<Option<[u8; 1000]>>"), &frame, &heap);
    }
}

#[test]
fn a_declared_vec_of_two_to_the_sixty_units_finishes_with_the_budget_error() {
    for c in CODECS {
        let frame = length(c, 1 << 60);
        let (r, heap) = measure(|| c.decode::<Vec<()>>(&frame));
        assert_budget_error(&r.unwrap_err(), &frame);
        assert_within_budget(&format!("{c:?} Vec<()> of 2^60"), &frame, &heap);
    }
}

#[test]
fn nested_vecs_with_huge_declared_lengths_allocate_within_2x_the_budget() {
    type Nested = Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<u64>>>>>>>>;
    for c in CODECS {
        // Each level declares 2^40 elements and the frame ends after the innermost length.
        let frame: Vec<u8> = (0..8).flat_map(|_| length(c, 1 << 40)).collect();
        let (r, heap) = measure(|| c.decode::<Nested>(&frame));
        assert!(r.is_err());
        assert_within_budget(&format!("{c:?} 8 nested Vecs declaring 2^40 each"), &frame, &heap);

        // The same with real (empty) elements: 1 MiB of them, the innermost level full.
        let mut frame: Vec<u8> = (0..7).flat_map(|_| length(c, 1)).collect();
        let inner = zeros_frame(c, MIB - frame.len());
        frame.extend_from_slice(&inner);
        let (r, heap) = measure(|| c.decode::<Nested>(&frame));
        let decoded = r.unwrap();
        assert_within_budget(&format!("{c:?} 8 nested Vecs, 1 MiB of u64"), &frame, &heap);
        drop(decoded);
    }
}

#[test]
fn a_mib_of_empty_strings_is_24x_and_fails_with_the_budget_error_within_2x_the_budget() {
    for c in CODECS {
        let frame = zeros_frame(c, MIB);
        let (r, heap) = measure(|| c.decode::<Vec<String>>(&frame));
        assert_budget_error(&r.unwrap_err(), &frame);
        assert_within_budget(&format!("{c:?} 1 MiB of empty Strings"), &frame, &heap);
    }
}

#[test]
fn a_mib_of_small_u64s_is_8x_and_decodes_within_2x_the_budget() {
    for c in CODECS {
        let frame = zeros_frame(c, MIB);
        let (r, heap) = measure(|| c.decode::<Vec<u64>>(&frame));
        let v = r.unwrap();
        assert_eq!(v.len(), MIB - length(c, v.len() as u64).len());
        assert!(v.iter().all(|&x| x == 0));
        assert_within_budget(&format!("{c:?} 1 MiB of small u64"), &frame, &heap);
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

#[test]
fn a_tree_100_000_levels_deep_fails_with_the_depth_error_on_a_256_kib_stack() {
    // Variant indexes are varints in both codecs: Node 1, Leaf 0.
    let mut frame = vec![1u8; 100_000];
    frame.push(0);
    for c in CODECS {
        let bytes = frame.clone();
        let (r, heap) = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || measure(|| c.decode::<Tree>(&bytes)))
            .unwrap()
            .join()
            .expect("the decode thread survived");
        assert_eq!(r.unwrap_err(), "the message nests deeper than 64 levels");
        assert_within_budget(&format!("{c:?} Tree of 100 000 levels"), &frame, &heap);
    }
}

#[test]
fn a_panicking_deserialize_impl_is_a_decode_error_not_a_panic() {
    #[derive(Debug)]
    struct Bomb;
    impl<'de> Deserialize<'de> for Bomb {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
            let n = u32::deserialize(de)?;
            panic!("bomb {n}")
        }
    }
    for c in CODECS {
        let frame = c.encode(&(1u8, 7u32), 100).unwrap();
        let err = c.decode::<(u8, Bomb)>(&frame).unwrap_err();
        assert_eq!(err, "its Deserialize impl panicked: bomb 7");
    }
}

// ---------------------------------------------------------------------------------------
// JSON. A declared length is not possible (a JSON array is as long as its elements), but a
// short element can still stand for a large value, and nesting costs one byte a level.

/// A JSON array of exactly `size` bytes: `[e,e,...,e]`, padded with spaces before the `]`.
fn json_array(element: &str, size: usize) -> Vec<u8> {
    let n = (size - 2 + 1) / (element.len() + 1);
    let mut json = String::with_capacity(size);
    json.push('[');
    json.push_str(&vec![element; n].join(","));
    json.push_str(&" ".repeat(size - 1 - json.len()));
    json.push(']');
    assert_eq!(json.len(), size);
    json.into_bytes()
}

#[test]
fn a_mib_of_json_nulls_as_vec_of_big_options_fails_with_the_budget_error_within_2x_the_budget() {
    // 5 bytes on the wire (`null,`), 1001 in the vector.
    let frame = json_array("null", MIB);
    let (r, heap) = measure(|| Codec::Json.decode::<Vec<Option<Kilo>>>(&frame));
    assert_budget_error(&r.unwrap_err(), &frame);
    assert_within_budget("JSON 1 MiB of null as Vec<Option<[u8; 1000]>>", &frame, &heap);
}

#[test]
fn a_mib_of_empty_json_objects_as_defaulted_structs_fails_with_the_budget_error_within_2x_the_budget() {
    /// 1000 bytes from `{}`: every field has a default.
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    struct Defaulted {
        data: Kilo,
    }
    let frame = json_array("{}", MIB);
    let (r, heap) = measure(|| Codec::Json.decode::<Vec<Defaulted>>(&frame));
    assert_budget_error(&r.unwrap_err(), &frame);
    assert_within_budget("JSON 1 MiB of {} as Vec<Defaulted { [u8; 1000] }>", &frame, &heap);
}

#[test]
fn a_mib_of_small_json_numbers_decodes_within_2x_the_budget() {
    // 2 bytes on the wire (`0,`), 8 in the vector: 4x.
    let frame = json_array("0", MIB);
    let (r, heap) = measure(|| Codec::Json.decode::<Vec<u64>>(&frame));
    assert_eq!(r.unwrap().len(), (MIB - 1) / 2);
    assert_within_budget("JSON 1 MiB of small u64", &frame, &heap);
}

#[test]
fn a_json_tree_100_000_levels_deep_fails_with_the_depth_error_on_a_256_kib_stack() {
    let mut frame = r#"{"Node":"#.repeat(100_000).into_bytes();
    frame.extend_from_slice(br#""Leaf""#);
    frame.extend(std::iter::repeat_n(b'}', 100_000));
    let bytes = frame.clone();
    let (r, heap) = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || measure(|| Codec::Json.decode::<Tree>(&bytes)))
        .unwrap()
        .join()
        .expect("the decode thread survived");
    assert_eq!(r.unwrap_err(), "the message nests deeper than 64 levels");
    assert_within_budget("JSON Tree of 100 000 levels", &frame, &heap);
}

#[test]
fn a_deeply_nested_unknown_json_field_is_skipped_on_a_256_kib_stack_within_the_budget() {
    #[derive(Debug, Deserialize)]
    struct Known {
        a: u8,
    }
    // An unknown field holding 100 000 nested arrays: serde_json skips it without recursing.
    let mut frame = br#"{"a":1,"junk":"#.to_vec();
    frame.extend(std::iter::repeat_n(b'[', 100_000));
    frame.extend(std::iter::repeat_n(b']', 100_000));
    frame.push(b'}');
    let bytes = frame.clone();
    let (r, heap) = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || measure(|| Codec::Json.decode::<Known>(&bytes)))
        .unwrap()
        .join()
        .expect("the decode thread survived");
    assert_eq!(r.unwrap().a, 1);
    assert_within_budget("JSON unknown field nested 100 000 deep", &frame, &heap);
}
