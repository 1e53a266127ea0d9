//! Bytes <-> messages, and nothing else: the UDP discovery datagrams
//! ([`datagram`]) and the TCP peer protocol frames ([`frame`]). Every decoder
//! is total: any input gives a message or an error, never a panic, and every
//! length is checked against a named limit before anything is allocated.
//! docs/protocol.md is the byte-level specification of what is here.

pub mod datagram;
pub mod frame;

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::id::ContentId;
use crate::manifest::Category;

/// Protocol version carried by every datagram and by the TCP hello
/// (3: inventory entries carry their content's other paths, [`MorePaths`]).
pub const VERSION: u8 = 3;
/// First bytes of every datagram and of every TCP connection's hello.
pub const MAGIC: [u8; 4] = *b"LNSH";
/// Longest node name accepted, in bytes.
pub const MAX_NODE_NAME: usize = 64;
/// Longest file name accepted, in bytes: one path component, and also a
/// whole inventory name (a path relative to its share root, see
/// [`check_path`]), so every version-2 node accepts every name sent.
pub const MAX_FILE_NAME: usize = 255;
/// Most components of an inventory name (`a/b/c` has 3).
pub const MAX_PATH_DEPTH: usize = 32;
/// Most other paths one inventory entry carries ([`MorePaths`]).
pub const MAX_MORE_PATHS: usize = 1024;
/// Most bytes of text the other paths of one entry hold together.
pub const MAX_MORE_PATHS_BYTES: usize = 65_536;
/// Most other paths all the entries of one inventory page carry together.
/// Each decoded path is a `String` (24 bytes and an allocation) however
/// short it is on the wire (2 bytes), so this, not the frame's size,
/// bounds what decoding a page of short paths allocates.
pub const MAX_PAGE_MORE_PATHS: usize = 16_384;
/// Domain of the id of an empty-folder entry ([`folder_entry_id`]).
const FOLDER_ID_DOMAIN: &str = "lanshare 2026 empty folder entry v1";
/// Longest comment accepted, in bytes.
pub const MAX_COMMENT: usize = 1024;
/// Longest error message accepted, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too short")]
    Truncated,
    #[error("bad magic (not a lanshare message)")]
    BadMagic,
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("field {field} is out of bounds")]
    OutOfBounds { field: &'static str },
}

impl From<postcard::Error> for WireError {
    fn from(e: postcard::Error) -> Self {
        WireError::Malformed(e.to_string())
    }
}

/// One content in a node's inventory, as sent to peers. `name` is the
/// content's path relative to its share root, components separated by `/`
/// (`holiday/day1/beach.jpg`; a file shared alone: its name). A name ending
/// in `/` is an empty folder (`holiday/empty/`): size 0, chunks `Full`, and
/// the id [`folder_entry_id`] of its path, so it names no content. A
/// received name is used as a path only through [`InventoryEntry::path`].
///
/// A content shared at several paths is one entry: `name` is the smallest
/// path, `more_paths` the others ([`MorePaths`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub id: ContentId,
    pub name: String,
    /// The content's other paths, ascending, each greater than `name`.
    pub more_paths: MorePaths,
    pub size: u64,
    pub category: Category,
    pub comment: String,
    /// Which chunks the node holds: `Full`, or a bitmap while downloading.
    pub chunks: ChunkSet,
}

impl InventoryEntry {
    /// About how many bytes the entry takes on the wire.
    pub fn approx_size(&self) -> usize {
        let bitmap = match &self.chunks {
            ChunkSet::Full => 0,
            ChunkSet::Partial(b) => b.as_bytes().len(),
        };
        48 + self.name.len() + self.comment.len() + bitmap + self.more_paths.wire_bytes()
    }
}

/// The other paths an inventory entry's content is shared at (besides its
/// `name`), ascending. Sent as a `Vec<String>`; takes one pointer and no
/// allocation for the common case of none. The decoder refuses more than
/// [`MAX_MORE_PATHS`] paths or [`MAX_MORE_PATHS_BYTES`] bytes of them as
/// they arrive, before keeping more; [`InventoryEntry::check`] checks each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
// One thin pointer per entry (a `Vec` would take three words in every
// one of 100,000 entries); the rare list behind it is boxed on purpose.
#[allow(clippy::box_collection)]
pub struct MorePaths(Option<Box<Vec<String>>>);

impl MorePaths {
    /// The paths given (none: no allocation).
    pub fn new(paths: Vec<String>) -> Self {
        MorePaths((!paths.is_empty()).then(|| Box::new(paths)))
    }

    pub fn as_slice(&self) -> &[String] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Bytes of text of every path together.
    pub fn text_bytes(&self) -> usize {
        self.as_slice().iter().map(String::len).sum()
    }

    /// About how many bytes they take on the wire (beyond the count).
    pub fn wire_bytes(&self) -> usize {
        self.text_bytes() + 2 * self.len()
    }
}

thread_local! {
    /// Other paths the inventory page being decoded on this thread may
    /// still carry ([`PagePathBudget`]); unlimited outside one.
    static PATHS_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// While alive, bounds the other paths ([`MorePaths`]) decoded on this
/// thread, all entries together: set around the decoding of one page.
pub struct PagePathBudget(usize);

impl PagePathBudget {
    pub fn new(max: usize) -> Self {
        PagePathBudget(PATHS_LEFT.replace(max))
    }
}

impl Drop for PagePathBudget {
    fn drop(&mut self) {
        PATHS_LEFT.set(self.0);
    }
}

/// Takes one path from the page's budget; false when none is left.
fn take_page_path() -> bool {
    let left = PATHS_LEFT.get();
    if left == 0 {
        return false;
    }
    PATHS_LEFT.set(left - 1);
    true
}

impl Serialize for MorePaths {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for MorePaths {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bounded;
        impl<'de> serde::de::Visitor<'de> for Bounded {
            type Value = MorePaths;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "at most {MAX_MORE_PATHS} paths of at most {MAX_MORE_PATHS_BYTES} bytes in all"
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MorePaths, A::Error> {
                use serde::de::Error;
                if seq.size_hint().is_some_and(|n| n > MAX_MORE_PATHS) {
                    return Err(A::Error::custom("too many paths in more_paths"));
                }
                let mut paths = Vec::new();
                let mut bytes = 0usize;
                while let Some(p) = seq.next_element::<String>()? {
                    bytes += p.len();
                    if paths.len() == MAX_MORE_PATHS || bytes > MAX_MORE_PATHS_BYTES {
                        return Err(A::Error::custom("more_paths out of bounds"));
                    }
                    if !take_page_path() {
                        return Err(A::Error::custom(
                            "more other paths in one page than allowed",
                        ));
                    }
                    paths.push(p);
                }
                paths.shrink_to_fit();
                Ok(MorePaths::new(paths))
            }
        }
        d.deserialize_seq(Bounded)
    }
}

/// Checks a text field from the network: at most `max` bytes and no
/// control characters (which could rewrite a user's terminal).
pub fn check_text(s: &str, max: usize, field: &'static str) -> Result<(), WireError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(WireError::OutOfBounds { field });
    }
    Ok(())
}

/// Makes local text safe to send: control characters become `_`, and it
/// is cut at a character boundary to `max` bytes.
pub fn clean_text(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    while out.len() > max {
        out.pop();
    }
    out
}

/// Checks a path from the network (an inventory name without its folder
/// mark): 1..=[`MAX_FILE_NAME`] bytes, 1..=[`MAX_PATH_DEPTH`] components
/// separated by `/`, none empty, `.` or `..`, no backslash and no control
/// character. So it is relative, and joined to a folder it stays inside it.
pub fn check_path(path: &str) -> Result<(), WireError> {
    let bad = WireError::OutOfBounds { field: "name" };
    if path.is_empty() || path.len() > MAX_FILE_NAME {
        return Err(bad);
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        if depth > MAX_PATH_DEPTH
            || c.is_empty()
            || c == "."
            || c == ".."
            || c.chars().any(|ch| ch == '\\' || ch.is_control())
        {
            return Err(bad);
        }
    }
    Ok(())
}

/// The id an empty-folder entry for `path` (without its trailing `/`)
/// carries: BLAKE3 in key-derivation mode, so it is never a content's id.
pub fn folder_entry_id(path: &str) -> ContentId {
    ContentId(blake3::derive_key(FOLDER_ID_DOMAIN, path.as_bytes()))
}

/// The entry this node sends for the empty folder `path` (a checked path).
pub fn folder_entry(path: &str) -> InventoryEntry {
    InventoryEntry {
        id: folder_entry_id(path),
        name: format!("{path}/"),
        more_paths: MorePaths::default(),
        size: 0,
        category: Category::Other,
        comment: String::new(),
        chunks: ChunkSet::Full,
    }
}

/// What an inventory entry names, once its name passes as a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPath<'a> {
    /// A file at this path.
    File(&'a str),
    /// An empty folder at this path (the name without its final `/`).
    Folder(&'a str),
}

impl InventoryEntry {
    /// Whether the name marks an empty folder (it ends in `/`).
    pub fn is_folder(&self) -> bool {
        self.name.ends_with('/')
    }

    /// The entry's name as a path, or `None` when it is no valid path
    /// ([`check_path`]) or a folder entry that is not one ([`folder_entry`]:
    /// size 0, chunks `Full`, its path's id). The only way a name from the
    /// network becomes a path: a name that is not one is shown and matched,
    /// never used to make a file or folder.
    pub fn path(&self) -> Option<EntryPath<'_>> {
        match self.name.strip_suffix('/') {
            Some(path) => {
                let folder = check_path(path).is_ok()
                    && self.size == 0
                    && self.chunks == ChunkSet::Full
                    && self.id == folder_entry_id(path);
                folder.then_some(EntryPath::Folder(path))
            }
            None => check_path(&self.name)
                .ok()
                .map(|()| EntryPath::File(&self.name)),
        }
    }

    /// Every path the entry's content is offered at: its name (when it
    /// passes as a path, [`InventoryEntry::path`]), then its other paths
    /// (each a file's; checked again here, so an unchecked local entry
    /// yields only paths too).
    pub fn paths(&self) -> impl Iterator<Item = EntryPath<'_>> {
        let more = self.more_paths.as_slice().iter();
        self.path().into_iter().chain(
            more.filter(|p| check_path(p).is_ok())
                .map(|p| EntryPath::File(p.as_str())),
        )
    }

    /// Every name of the entry, as sent: its name, then its other paths.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str())
            .chain(self.more_paths.as_slice().iter().map(String::as_str))
    }

    /// Checks every bound of an entry received from the network. The name
    /// is checked as text (as by every version-2 node); whether it is a
    /// usable path is [`InventoryEntry::path`]'s question. Each other path
    /// must pass [`check_path`], and with the name they must be strictly
    /// ascending (so none repeats); an empty folder has none.
    pub fn check(&self) -> Result<(), WireError> {
        if self.name.is_empty() {
            return Err(WireError::OutOfBounds { field: "name" });
        }
        check_text(&self.name, MAX_FILE_NAME, "name")?;
        self.check_more_paths()?;
        // Comments may span lines; other control characters are refused.
        if self.comment.len() > MAX_COMMENT
            || self.comment.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(WireError::OutOfBounds { field: "comment" });
        }
        // One bit per chunk of the advertised size, and no more (at most
        // MAX_CHUNKS / 8 bytes): a bitmap cannot carry more than it means.
        if let ChunkSet::Partial(b) = &self.chunks
            && b.as_bytes().len() > crate::chunkset::max_bitmap_bytes(self.size)
        {
            return Err(WireError::OutOfBounds { field: "chunks" });
        }
        Ok(())
    }
}

impl InventoryEntry {
    fn check_more_paths(&self) -> Result<(), WireError> {
        let more = self.more_paths.as_slice();
        let bad = WireError::OutOfBounds {
            field: "more_paths",
        };
        if more.is_empty() {
            return Ok(());
        }
        if self.is_folder()
            || more.len() > MAX_MORE_PATHS
            || self.more_paths.text_bytes() > MAX_MORE_PATHS_BYTES
        {
            return Err(bad);
        }
        let mut prev = self.name.as_str();
        for p in more {
            if check_path(p).is_err() || p.as_str() <= prev {
                return Err(bad);
            }
            prev = p;
        }
        Ok(())
    }
}

/// Decodes a postcard body that must fill `bytes` exactly.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_always_accepted() {
        for s in [
            "plain",
            "tab\there",
            "new\nline",
            "\u{1b}[31mred",
            &"é".repeat(200),
        ] {
            let c = clean_text(s, MAX_NODE_NAME);
            check_text(&c, MAX_NODE_NAME, "name").unwrap();
        }
    }

    #[test]
    fn paths_are_relative_and_bounded() {
        for ok in [
            "a",
            "holiday/day1/beach.jpg",
            "with space/é ü.txt",
            ".hidden/x",
            "a..b",
        ] {
            check_path(ok).unwrap();
        }
        let deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        let long = "x".repeat(MAX_FILE_NAME + 1);
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            ".",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "..\\x",
            "a\nb",
            "a\u{1b}[31m",
            &deep,
            &long,
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        check_path(&vec!["d"; MAX_PATH_DEPTH].join("/")).unwrap();
    }

    #[test]
    fn folder_entries_are_checked() {
        let e = folder_entry("holiday/empty");
        assert_eq!(e.name, "holiday/empty/");
        e.check().unwrap();
        assert_eq!(e.path(), Some(EntryPath::Folder("holiday/empty")));
        // The id must be the folder's: an entry cannot pass as a folder
        // while naming a content (or another folder).
        let mut forged = e.clone();
        forged.id = ContentId([7; 32]);
        assert_eq!(forged.path(), None);
        let mut sized = e.clone();
        sized.size = 1;
        assert_eq!(sized.path(), None);
        assert_eq!(folder_entry("../x").path(), None);
        assert_eq!(folder_entry("").path(), None, "a lone / is no folder");
        // A name that is no path still decodes (every version-2 node sends
        // and accepts it), but is never a path.
        let mut odd = folder_entry("x");
        odd.name = "..\\evil".into();
        odd.check().unwrap();
        assert_eq!(odd.path(), None);
    }

    fn entry_at(name: &str, more: &[&str]) -> InventoryEntry {
        InventoryEntry {
            id: ContentId([0xab; 32]),
            name: name.into(),
            more_paths: MorePaths::new(more.iter().map(|p| p.to_string()).collect()),
            size: 1,
            category: Category::Image,
            comment: String::new(),
            chunks: ChunkSet::Full,
        }
    }

    /// The bytes of an entry at three paths (docs/protocol.md §2.5).
    #[test]
    fn golden_entry_with_more_paths() {
        let e = entry_at("a/x.jpg", &["b/x.jpg", "x.jpg"]);
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(
            crate::id::to_hex(&bytes),
            concat!(
                "abababababababababababababababababababababababababababababababab", // id
                "07612f782e6a7067", // name "a/x.jpg"
                "02",
                "07622f782e6a7067",
                "05782e6a7067", // 2 more paths
                "01",
                "02",
                "00",
                "00", // size 1, image, no comment, Full
            )
        );
        let back: InventoryEntry = decode_exact(&bytes).unwrap();
        assert_eq!(back, e);
        back.check().unwrap();
        let paths: Vec<EntryPath<'_>> = back.paths().collect();
        assert_eq!(
            paths,
            [
                EntryPath::File("a/x.jpg"),
                EntryPath::File("b/x.jpg"),
                EntryPath::File("x.jpg")
            ]
        );
        // One path: a single 00 byte, and nothing allocated.
        let one = entry_at("x.jpg", &[]);
        assert!(one.more_paths.0.is_none());
        assert_eq!(postcard::to_allocvec(&one).unwrap()[32 + 6], 0);
        // The field costs one pointer per entry.
        assert!(
            size_of::<InventoryEntry>() <= 128,
            "{}",
            size_of::<InventoryEntry>()
        );
    }

    #[test]
    fn more_paths_are_bounded_and_checked() {
        // Bounds at decode, before the paths are kept.
        let with_count = |n: usize, each: &str| {
            let mut b = vec![0xab; 32];
            b.extend(postcard::to_allocvec(&"a").unwrap());
            b.extend(postcard::to_allocvec(&vec![each; n]).unwrap());
            b.extend([1, 2, 0, 0]);
            b
        };
        assert!(decode_exact::<InventoryEntry>(&with_count(MAX_MORE_PATHS, "b")).is_ok());
        assert!(decode_exact::<InventoryEntry>(&with_count(MAX_MORE_PATHS + 1, "b")).is_err());
        let mut huge = vec![0xab; 32];
        huge.extend([1, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(
            decode_exact::<InventoryEntry>(&huge).is_err(),
            "a count of 2^32-1"
        );
        let long = "p".repeat(MAX_FILE_NAME);
        let fits = MAX_MORE_PATHS_BYTES / MAX_FILE_NAME;
        assert!(decode_exact::<InventoryEntry>(&with_count(fits, &long)).is_ok());
        assert!(decode_exact::<InventoryEntry>(&with_count(fits + 1, &long)).is_err());
        // Each path: a checked path, strictly ascending after the name.
        entry_at("a", &["b", "c/d"]).check().unwrap();
        for bad in [
            entry_at("a", &["a"]),
            entry_at("b", &["a"]),
            entry_at("a", &["c", "b"]),
            entry_at("a", &["b", "b"]),
            entry_at("a", &["../b"]),
            entry_at("a", &["b/"]),
            entry_at("a", &["b\\c"]),
            entry_at("a", &["b\u{7}"]),
            entry_at("a", &[""]),
        ] {
            assert_eq!(
                bad.check(),
                Err(WireError::OutOfBounds {
                    field: "more_paths"
                }),
                "{:?}",
                bad.more_paths
            );
        }
        let mut folder = folder_entry("a/e");
        folder.more_paths = MorePaths::new(vec!["b".into()]);
        assert!(folder.check().is_err(), "an empty folder has one path");
    }

    /// Characters that matter to paths, often, and anything else, sometimes.
    fn tricky_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("/".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("\\".to_string()),
            Just("\0".to_string()),
            Just("~".to_string()),
            Just("a".to_string()),
            Just("é".to_string()),
            "\\PC{1,3}",
            ".{1,2}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// Whatever a peer sends, a name that passes the check, joined to
        /// a folder, names something strictly inside that folder: every
        /// component is a plain name (never `..`, a root or a prefix).
        #[test]
        fn no_checked_path_escapes_its_folder(path in tricky_path()) {
            use std::path::{Component, Path};
            if check_path(&path).is_ok() {
                let base = Path::new("/home/n/downloads/holiday");
                let joined = base.join(&path);
                proptest::prop_assert!(joined.starts_with(base));
                let rest = joined.strip_prefix(base).unwrap();
                proptest::prop_assert!(rest.components().all(|c| matches!(c, Component::Normal(_))));
                proptest::prop_assert_eq!(rest.components().count(), path.split('/').count());
                proptest::prop_assert!(path.len() <= MAX_FILE_NAME);
            }
        }

        /// Any bytes: an entry or an error, never a panic; an entry that
        /// passes its check yields only checked paths, and never more
        /// than the bounds allow.
        #[test]
        fn entry_decoding_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), more in proptest::collection::vec(tricky_path(), 0..6)) {
            if let Ok(e) = decode_exact::<InventoryEntry>(&bytes) {
                proptest::prop_assert!(e.more_paths.len() <= MAX_MORE_PATHS);
            }
            let mut e = entry_at("a", &[]);
            e.more_paths = MorePaths::new(more);
            let bytes = postcard::to_allocvec(&e).unwrap();
            let back: InventoryEntry = decode_exact(&bytes).unwrap();
            for cut in 0..bytes.len() {
                proptest::prop_assert!(decode_exact::<InventoryEntry>(&bytes[..cut]).is_err());
            }
            if back.check().is_ok() {
                for p in back.paths() {
                    let (EntryPath::File(p) | EntryPath::Folder(p)) = p;
                    proptest::prop_assert!(check_path(p).is_ok());
                }
                proptest::prop_assert_eq!(back.paths().count(), 1 + back.more_paths.len());
            }
        }

        /// Whatever name an entry carries, the path it yields (if any) is
        /// relative: no component empty, `.` or `..`.
        #[test]
        fn entries_yield_only_relative_paths(name in tricky_path()) {
            let e = InventoryEntry {
                id: folder_entry_id(name.strip_suffix('/').unwrap_or(&name)),
                name: name.clone(),
                more_paths: MorePaths::default(),
                size: 0,
                category: Category::Other,
                comment: String::new(),
                chunks: ChunkSet::Full,
            };
            if let Some(EntryPath::File(path) | EntryPath::Folder(path)) = e.path() {
                proptest::prop_assert!(check_path(path).is_ok());
                proptest::prop_assert!(path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                proptest::prop_assert!(!path.contains('\\') && !path.chars().any(char::is_control));
            }
        }
    }
}
