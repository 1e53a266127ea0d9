//! Name resolution for `fetch` and `ls` (PRODUCT.md): names are paths
//! relative to a share root (`holiday/day1/beach.jpg`). A query names a
//! content or a folder by its exact path, by its file or folder name, by a
//! file name without its extension, case-insensitively; or a content by its
//! id or an unambiguous prefix of at least 8 hex digits. Pure.

use std::collections::BTreeSet;

use crate::id::{ContentId, MIN_PREFIX_HEX};

/// What a query can name: one content, or a folder (by its path, as the
/// network spells it: `holiday`, `holiday/day1`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    Content(ContentId),
    Folder(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    One(ContentId),
    /// A folder: every content whose path starts with it.
    Folder(String),
    /// Several matches; the user must pick one (a content by id, a
    /// folder by its full path).
    Ambiguous(Vec<Match>),
    None,
}

/// The forms of `name` a query may match: the name itself, without its last
/// extension, and without every extension (`a.tar.gz` -> `a.tar`, `a`).
fn stems(name: &str) -> [&str; 2] {
    let last = match name.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => s,
        _ => name,
    };
    let first = match name.split_once('.') {
        Some((s, _)) if !s.is_empty() => s,
        _ => name,
    };
    [last, first]
}

/// The last component of a path (`holiday/day1/beach.jpg` -> `beach.jpg`).
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folders a name lies in, outermost first (`a/b/c.txt` -> `a`, `a/b`),
/// and, for an empty-folder entry (`a/e/`), that folder too. None for a
/// name that is no valid path ([`crate::wire::check_path`]).
pub fn folders_of(name: &str) -> impl Iterator<Item = &str> {
    let (path, is_folder) = match name.strip_suffix('/') {
        Some(p) => (p, true),
        None => (name, false),
    };
    let path = if crate::wire::check_path(path).is_ok() {
        path
    } else {
        ""
    };
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .chain(is_folder.then_some(path))
        .filter(|f| !f.is_empty())
}

/// Resolves `query` against `(id, names)` candidates (names are paths; one
/// ending in `/` is an empty folder and names no content), most specific
/// first: the exact path of a content or folder; then a file or folder
/// name (the path's last component); then a file name without extension;
/// then an id prefix. All case-insensitive.
pub fn resolve<'a, I, N>(query: &str, candidates: I) -> Resolution
where
    I: IntoIterator<Item = (ContentId, N)>,
    N: IntoIterator<Item = &'a str>,
{
    let query = query.trim().trim_end_matches('/');
    if query.is_empty() {
        return Resolution::None;
    }
    let mut contents: Vec<(ContentId, Vec<&'a str>)> = Vec::new();
    let mut folders: BTreeSet<&'a str> = BTreeSet::new();
    for (id, names) in candidates {
        let names: Vec<&'a str> = names.into_iter().collect();
        folders.extend(names.iter().flat_map(|n| folders_of(n)));
        let files: Vec<&'a str> = names.into_iter().filter(|n| !n.ends_with('/')).collect();
        if !files.is_empty() {
            contents.push((id, files));
        }
    }
    let eq = |n: &str| n.eq_ignore_ascii_case(query);
    let tiers: [&dyn Fn(&str) -> bool; 3] = [&|n| eq(n), &|n| eq(file_name(n)), &|n| {
        stems(file_name(n)).iter().any(|s| eq(s))
    }];
    for (tier, matches) in tiers.iter().enumerate() {
        let mut set: BTreeSet<Match> = contents
            .iter()
            .filter(|(_, names)| names.iter().any(|n| matches(n)))
            .map(|(id, _)| Match::Content(*id))
            .collect();
        // Folders have no extension to drop: only the first two tiers.
        if tier < 2 {
            set.extend(
                folders
                    .iter()
                    .filter(|f| matches(f))
                    .map(|f| Match::Folder(f.to_string())),
            );
        }
        if let Some(r) = pick(set) {
            return r;
        }
    }
    if query.len() >= MIN_PREFIX_HEX
        && query.len() <= 64
        && query.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let by_id: BTreeSet<Match> = contents
            .iter()
            .filter(|(id, _)| id.has_hex_prefix(query))
            .map(|(id, _)| Match::Content(*id))
            .collect();
        if let Some(r) = pick(by_id) {
            return r;
        }
    }
    Resolution::None
}

fn pick(set: BTreeSet<Match>) -> Option<Resolution> {
    match set.len() {
        0 => None,
        1 => Some(match set.into_iter().next().expect("one element") {
            Match::Content(id) => Resolution::One(id),
            Match::Folder(f) => Resolution::Folder(f),
        }),
        _ => Some(Resolution::Ambiguous(set.into_iter().collect())),
    }
}

/// One name a content goes by, and how much its holders are trusted: a
/// name from a holder that proved it holds the content (it sent the
/// manifest) ranks above one from holders that only listed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameChoice<'a> {
    pub name: &'a str,
    pub proven: bool,
}

/// The name a download is saved under, given what the user typed and the
/// names (paths) the content goes by: the file name (last component) of
/// the name chosen. Never a name a holder merely listed first:
/// 1. a name equal to the query (case-sensitive, then case-insensitive);
/// 2. a name whose file name equals the query (`beach.jpg` ->
///    `holiday/day1/beach.jpg`);
/// 3. a name whose file name's stem equals the query (`data` -> `data.bin`);
/// 4. otherwise (an id prefix) any name;
///
/// and within the first step that finds any, a proven holder's name first,
/// then the first in sort order, so the choice is deterministic.
pub fn choose_name(query: &str, names: &[NameChoice<'_>]) -> Option<String> {
    let query = query.trim();
    let names: Vec<&NameChoice<'_>> = names.iter().filter(|n| !n.name.ends_with('/')).collect();
    let best = |f: &dyn Fn(&str) -> bool| {
        names
            .iter()
            .filter(|n| f(n.name))
            .min_by(|a, b| b.proven.cmp(&a.proven).then(a.name.cmp(b.name)))
            .map(|n| n.name.to_string())
    };
    best(&|n| n == query)
        .or_else(|| best(&|n| n.eq_ignore_ascii_case(query)))
        .or_else(|| best(&|n| file_name(n).eq_ignore_ascii_case(query)))
        .or_else(|| {
            best(&|n| {
                stems(file_name(n))
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(query))
            })
        })
        .or_else(|| best(&|_| true))
        .map(|n| file_name(&n).to_string())
}

/// `ls QUERY` filter: a case-insensitive substring of a name, or an id prefix.
pub fn matches_filter<'a>(
    query: &str,
    id: &ContentId,
    mut names: impl Iterator<Item = &'a str>,
) -> bool {
    let q = query.to_lowercase();
    names.any(|n| n.to_lowercase().contains(&q)) || (q.len() >= 4 && id.has_hex_prefix(&q))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ContentId {
        ContentId([b; 32])
    }

    fn run(query: &str, c: &[(ContentId, Vec<&'static str>)]) -> Resolution {
        resolve(
            query,
            c.iter().map(|(id, names)| (*id, names.iter().copied())),
        )
    }

    #[test]
    fn exact_then_stem_then_prefix() {
        let c = vec![
            (id(1), vec!["photo.png"]),
            (id(2), vec!["Photo"]),
            (id(3), vec!["song.mp3"]),
        ];
        assert_eq!(run("photo.png", &c), Resolution::One(id(1)));
        assert_eq!(run("PHOTO", &c), Resolution::One(id(2)), "exact beats stem");
        assert_eq!(run("song", &c), Resolution::One(id(3)));
        assert_eq!(run("0303030303", &c), Resolution::One(id(3)));
        assert_eq!(run("0303", &c), Resolution::None, "prefix needs 8 digits");
        assert_eq!(run("nothing", &c), Resolution::None);
        assert_eq!(run("  ", &c), Resolution::None);
    }

    #[test]
    fn ambiguous_names_list_every_candidate() {
        let c = vec![
            (id(1), vec!["photo.png"]),
            (id(2), vec!["photo.jpg"]),
            (id(3), vec!["other"]),
        ];
        assert_eq!(
            run("photo", &c),
            Resolution::Ambiguous(vec![Match::Content(id(1)), Match::Content(id(2))])
        );
        // The same content under two names is not ambiguous.
        let c = vec![(id(1), vec!["photo.png", "photo.PNG"])];
        assert_eq!(run("photo", &c), Resolution::One(id(1)));
    }

    #[test]
    fn multi_extension_names() {
        let c = vec![(id(1), vec!["backup.tar.gz"])];
        assert_eq!(run("backup", &c), Resolution::One(id(1)));
        assert_eq!(run("backup.tar", &c), Resolution::One(id(1)));
        let c = vec![(id(1), vec![".hidden"])];
        assert_eq!(run(".hidden", &c), Resolution::One(id(1)));
    }

    #[test]
    fn saved_name_is_the_one_asked_for() {
        let n = |name, proven| NameChoice { name, proven };
        let names = [
            n("0-invoice.pdf.exe", false),
            n("data.bin", false),
            n("Data.BIN", true),
        ];
        assert_eq!(choose_name("data.bin", &names).as_deref(), Some("data.bin"));
        assert_eq!(
            choose_name("DATA.bin", &names).as_deref(),
            Some("Data.BIN"),
            "case-insensitive: the proven holder's spelling"
        );
        assert_eq!(choose_name(" data ", &names).as_deref(), Some("Data.BIN"));
        let names = [n("0-invoice.pdf.exe", false), n("data.bin", false)];
        assert_eq!(choose_name("data", &names).as_deref(), Some("data.bin"));
        assert_eq!(
            choose_name("0123abcd", &names).as_deref(),
            Some("0-invoice.pdf.exe"),
            "nothing matches: deterministic"
        );
        let names = [n("0-invoice.pdf.exe", false), n("z.bin", true)];
        assert_eq!(
            choose_name("0123abcd", &names).as_deref(),
            Some("z.bin"),
            "nothing matches: the proven holder's name"
        );
        assert_eq!(choose_name("x", &[]), None);
    }

    #[test]
    fn paths_and_folders() {
        let c = vec![
            (id(1), vec!["holiday/day1/beach.jpg"]),
            (id(2), vec!["holiday/day2/sunset.jpg"]),
            (id(3), vec!["work/notes.txt"]),
            (id(4), vec!["home/notes.txt"]),
            (id(5), vec!["holiday/empty/"]),
            (id(6), vec!["notes.txt"]),
        ];
        let folder = |f: &str| Resolution::Folder(f.to_string());
        assert_eq!(run("holiday/day1/beach.jpg", &c), Resolution::One(id(1)));
        assert_eq!(run("beach.jpg", &c), Resolution::One(id(1)));
        assert_eq!(run("sunset", &c), Resolution::One(id(2)));
        assert_eq!(run("holiday", &c), folder("holiday"));
        assert_eq!(run("Holiday/", &c), folder("holiday"));
        assert_eq!(run("holiday/day1", &c), folder("holiday/day1"));
        assert_eq!(run("day2", &c), folder("holiday/day2"));
        assert_eq!(run("empty", &c), folder("holiday/empty"), "an empty folder");
        // Two notes.txt in different folders: the path tells them apart;
        // the exact path of the top-level one wins over file names.
        assert_eq!(run("work/notes.txt", &c), Resolution::One(id(3)));
        assert_eq!(run("notes.txt", &c), Resolution::One(id(6)));
        assert_eq!(
            run("notes", &c),
            Resolution::Ambiguous(vec![
                Match::Content(id(3)),
                Match::Content(id(4)),
                Match::Content(id(6))
            ])
        );
        // An empty-folder entry is no content: not even by id.
        assert_eq!(run("0505050505", &c), Resolution::None);
        // A folder and a file of one name are ambiguous.
        let c = vec![(id(1), vec!["music/a.mp3"]), (id(2), vec!["music"])];
        assert_eq!(
            run("music", &c),
            Resolution::Ambiguous(vec![Match::Content(id(2)), Match::Folder("music".into())])
        );
    }

    #[test]
    fn folders_of_a_name() {
        let f = |n| folders_of(n).collect::<Vec<_>>();
        assert_eq!(f("a/b/c.txt"), ["a", "a/b"]);
        assert_eq!(f("c.txt"), Vec::<&str>::new());
        assert_eq!(f("a/e/"), ["a", "a/e"]);
        assert_eq!(f("../a/b"), Vec::<&str>::new(), "no path, no folders");
        assert_eq!(f("a//b"), Vec::<&str>::new());
    }

    #[test]
    fn a_path_is_saved_under_its_file_name() {
        let n = |name| NameChoice {
            name,
            proven: false,
        };
        let names = [n("holiday/day1/beach.jpg"), n("other/beach.png")];
        assert_eq!(
            choose_name("beach.jpg", &names).as_deref(),
            Some("beach.jpg")
        );
        assert_eq!(
            choose_name("holiday/day1/beach.jpg", &names).as_deref(),
            Some("beach.jpg")
        );
        assert_eq!(choose_name("beach", &names).as_deref(), Some("beach.jpg"));
    }

    #[test]
    fn filter() {
        assert!(matches_filter("HOT", &id(1), ["photo.png"].into_iter()));
        assert!(matches_filter("0101", &id(1), ["x"].into_iter()));
        assert!(!matches_filter("zzz", &id(1), ["photo.png"].into_iter()));
    }
}
