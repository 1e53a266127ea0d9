//! The library as the web API pages it: what the network offers (contents
//! with at least one online holder), filtered by a query and a category,
//! sorted, and cut to one page, so a page of 100 rows out of 100,000 costs
//! one pass over the dictionary and 100 views. Reads the dictionary only;
//! never writes it, never formats text for people.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::api::ContentView;
use crate::dict::Dict;
use crate::id::ContentId;
use crate::manifest::Category;

/// Most rows one page holds.
pub const MAX_LIMIT: usize = 500;

/// What a library page is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    #[default]
    Name,
    Size,
    /// Online holders.
    Holders,
    Category,
}

/// Ascending or descending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

/// One page of the library, as asked.
#[derive(Clone, Debug, PartialEq)]
pub struct LibraryQuery {
    /// Kept when a name or the comment contains it (case-insensitive), or
    /// the content id starts with it (4 hex digits at least).
    pub query: Option<String>,
    pub category: Option<Category>,
    pub sort: SortKey,
    pub order: Order,
    pub offset: usize,
    /// At most [`MAX_LIMIT`].
    pub limit: usize,
}

/// Matches per category (for the filter buttons).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryCount {
    pub category: Category,
    pub count: usize,
}

/// One page of the library.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryPage {
    /// Contents matching the query and category, over every page.
    pub total: usize,
    pub offset: usize,
    pub items: Vec<ContentView>,
    /// Contents matching the query, by category (the category filter aside).
    pub categories: Vec<CategoryCount>,
}

/// What one content sorts by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Number(u64),
}

struct Row {
    key: Key,
    name: String,
    id: ContentId,
}

/// The page `q` asks for; `local`: contents this node holds complete.
pub fn page(dict: &Dict, q: &LibraryQuery, local: &HashSet<ContentId>) -> LibraryPage {
    let needle = q
        .query
        .as_deref()
        .map(str::to_lowercase)
        .filter(|s| !s.is_empty());
    let by_id = needle
        .as_deref()
        .filter(|n| n.len() >= 4 && n.chars().all(|c| c.is_ascii_hexdigit()));
    let mut counts = [0usize; 7];
    let mut rows: Vec<Row> = dict.contents.map_all(|id, c| {
        let online = c.holders.keys().filter(|h| dict.peers.is_online(h)).count();
        if online == 0 {
            return None;
        }
        if let Some(n) = needle.as_deref() {
            let hit = c.names.iter().any(|name| name.to_lowercase().contains(n))
                || c.comment.to_lowercase().contains(n)
                || by_id.is_some_and(|h| id.has_hex_prefix(h));
            if !hit {
                return None;
            }
        }
        counts[c.category as usize] += 1;
        if q.category.is_some_and(|cat| c.category != cat) {
            return None;
        }
        let name = c.names.iter().next().cloned().unwrap_or_default();
        let key = match q.sort {
            SortKey::Name => Key::Text(name.to_lowercase()),
            SortKey::Size => Key::Number(c.size),
            SortKey::Holders => Key::Number(online as u64),
            SortKey::Category => Key::Text(c.category.as_str().to_string()),
        };
        Some(Row { key, name, id: *id })
    });
    rows.sort_unstable_by(|a, b| {
        let ord = a
            .key
            .cmp(&b.key)
            .then_with(|| a.name.cmp(&b.name))
            .then(a.id.cmp(&b.id));
        match q.order {
            Order::Asc => ord,
            Order::Desc => ord.reverse(),
        }
    });
    let total = rows.len();
    let limit = q.limit.min(MAX_LIMIT);
    let items = rows
        .iter()
        .skip(q.offset)
        .take(limit)
        .filter_map(|r| dict.view(&r.id, local.contains(&r.id)))
        .collect();
    let categories = Category::ALL
        .iter()
        .map(|c| CategoryCount {
            category: *c,
            count: counts[*c as usize],
        })
        .collect();
    LibraryPage {
        total,
        offset: q.offset,
        items,
        categories,
    }
}
