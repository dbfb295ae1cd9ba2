//! Conformance suite of `VectorStore`: the same behaviour tests run against `Embedded` and
//! `Chroma`, plus durability and concurrency tests of `Embedded`.
//!
//! Chroma: `TEST_CHROMA_URL` or a server started once for this binary (see
//! `support/chroma_server.rs`). Every test uses its own tenant (a UUID), so they run in
//! parallel against one server.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;

use aida_ai::vector::{
    Chroma, ChromaConfig, Embedded, EmbeddedOptions, Filter, Hit, Item, MetaValue, Namespace,
    VectorError, VectorStore,
};
use tempfile::TempDir;
use uuid::Uuid;

fn ns(collection: &str) -> Namespace {
    Namespace::new(format!("tenant-{}", Uuid::new_v4()), collection)
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn id_set(hits: &[Hit]) -> BTreeSet<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

fn strings(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

fn assert_close(actual: f32, expected: f32, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-4,
        "{what}: similarity {actual}, expected {expected}"
    );
}

async fn upsert(store: &dyn VectorStore, ns: &Namespace, items: Vec<Item>) {
    store.upsert(ns, items).await.expect("upsert");
}

async fn query(
    store: &dyn VectorStore,
    ns: &Namespace,
    v: &[f32],
    k: usize,
    f: &Filter,
) -> Vec<Hit> {
    store.query(ns, v, k, f).await.expect("query")
}

// ---------------------------------------------------------------------------------------------
// Conformance tests, each against `&dyn VectorStore`.

async fn nearest_first_with_cosine_similarity(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(
        store,
        &ns,
        vec![
            Item::new("b", vec![0.0, 1.0, 0.0]),
            Item::new("a", vec![2.0, 0.0, 0.0])
                .document("alpha")
                .meta("stage", "new"),
            Item::new("d", vec![-1.0, 0.0, 0.0]),
            Item::new("c", vec![1.0, 1.0, 0.0]),
        ],
    )
    .await;
    let hits = query(store, &ns, &[1.0, 0.0, 0.0], 4, &Filter::all()).await;
    assert_eq!(ids(&hits), ["a", "c", "b", "d"]);
    assert_close(hits[0].similarity, 1.0, "a");
    assert_close(hits[1].similarity, std::f32::consts::FRAC_1_SQRT_2, "c");
    assert_close(hits[2].similarity, 0.0, "b");
    assert_close(hits[3].similarity, -1.0, "d");
    assert_eq!(hits[0].document.as_deref(), Some("alpha"));
    assert_eq!(hits[0].metadata["stage"], MetaValue::from("new"));
    assert_eq!(hits[1].document, None);
    assert!(hits[1].metadata.is_empty());

    let top2 = query(store, &ns, &[0.0, 3.0, 0.1], 2, &Filter::all()).await;
    assert_eq!(ids(&top2), ["b", "c"]);
}

async fn ties_break_by_id(store: &dyn VectorStore) {
    let ns = ns("leads");
    let v = vec![0.3, 0.4, 0.5];
    upsert(
        store,
        &ns,
        vec![
            Item::new("m", v.clone()),
            Item::new("b", v.clone()),
            Item::new("x", v.clone()),
            Item::new("far", vec![-0.3, 0.4, -0.5]),
        ],
    )
    .await;
    let hits = query(store, &ns, &v, 3, &Filter::all()).await;
    assert_eq!(ids(&hits), ["b", "m", "x"]);
}

async fn upsert_replaces_by_id(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(
        store,
        &ns,
        vec![
            Item::new("a", vec![1.0, 0.0]).document("v1").meta("old", 1),
            Item::new("b", vec![1.0, 1.0]).document("b1").meta("k", "v"),
        ],
    )
    .await;
    upsert(
        store,
        &ns,
        vec![
            Item::new("a", vec![0.0, 1.0])
                .document("v2")
                .meta("new", true),
        ],
    )
    .await;
    assert_eq!(store.count(&ns).await.expect("count"), 2);
    let hits = query(store, &ns, &[0.0, 1.0], 1, &Filter::all()).await;
    assert_eq!(ids(&hits), ["a"]);
    assert_close(hits[0].similarity, 1.0, "replaced a");
    assert_eq!(hits[0].document.as_deref(), Some("v2"));
    assert_eq!(
        hits[0].metadata.keys().collect::<Vec<_>>(),
        ["new"],
        "metadata is replaced, not merged"
    );
    // Replacing with no document and no metadata clears both.
    upsert(store, &ns, vec![Item::new("b", vec![1.0, 1.0])]).await;
    let b = store.get(&ns, &strings(&["b"])).await.expect("get b");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].document, None);
    assert!(b[0].metadata.is_empty(), "{:?}", b[0].metadata);
    assert_eq!(store.count(&ns).await.expect("count"), 2);
}

async fn delete_removes_items(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(
        store,
        &ns,
        vec![
            Item::new("a", vec![1.0, 0.0]),
            Item::new("b", vec![0.9, 0.1]),
            Item::new("c", vec![0.0, 1.0]),
        ],
    )
    .await;
    store
        .delete(&ns, &strings(&["a", "missing", "a"]))
        .await
        .expect("delete");
    assert_eq!(store.count(&ns).await.expect("count"), 2);
    let hits = query(store, &ns, &[1.0, 0.0], 10, &Filter::all()).await;
    assert_eq!(ids(&hits), ["b", "c"]);
    assert!(
        store
            .get(&ns, &strings(&["a"]))
            .await
            .expect("get")
            .is_empty()
    );
    // An empty id list deletes nothing (it must never mean "everything").
    store.delete(&ns, &[]).await.expect("empty delete");
    assert_eq!(store.count(&ns).await.expect("count"), 2);
    // Deleting in a namespace that does not exist is fine.
    store
        .delete(&ns_other(&ns), &strings(&["b"]))
        .await
        .expect("delete elsewhere");
    assert_eq!(store.count(&ns).await.expect("count"), 2);
    // Re-adding a deleted id works.
    upsert(store, &ns, vec![Item::new("a", vec![1.0, 0.0])]).await;
    assert_eq!(
        ids(&query(store, &ns, &[1.0, 0.0], 1, &Filter::all()).await),
        ["a"]
    );
}

fn ns_other(ns: &Namespace) -> Namespace {
    Namespace::new(format!("{}-other", ns.tenant), ns.collection.clone())
}

async fn count_tracks_items(store: &dyn VectorStore) {
    let ns = ns("leads");
    assert_eq!(store.count(&ns).await.expect("count"), 0);
    upsert(store, &ns, vec![]).await;
    assert_eq!(store.count(&ns).await.expect("count"), 0);
    upsert(
        store,
        &ns,
        (0..3)
            .map(|i| Item::new(format!("a{i}"), vec![1.0, i as f32]))
            .collect(),
    )
    .await;
    upsert(
        store,
        &ns,
        (0..5)
            .map(|i| Item::new(format!("b{i}"), vec![i as f32, 1.0]))
            .collect(),
    )
    .await;
    assert_eq!(store.count(&ns).await.expect("count"), 8);
}

async fn filters_select_by_metadata(store: &dyn VectorStore) {
    let ns = ns("deals");
    let item = |id: &str, x: f32, stage: &str, score: i64, hot: bool| {
        Item::new(id, vec![1.0, x])
            .meta("stage", stage)
            .meta("score", score)
            .meta("hot", hot)
            .meta("weight", score as f64 / 2.0)
    };
    upsert(
        store,
        &ns,
        vec![
            item("n1", 0.0, "new", 1, true),
            item("n2", 0.1, "new", 2, false),
            item("q1", 0.2, "qualified", 3, true),
            item("w1", 0.3, "won", 4, false),
            item("l1", 0.4, "lost", 5, true),
        ],
    )
    .await;
    let q = [1.0, 0.0];
    let run = |f: Filter| {
        let ns = ns.clone();
        async move { query(store, &ns, &q, 10, &f).await }
    };

    let all = run(Filter::all()).await;
    assert_eq!(ids(&all), ["n1", "n2", "q1", "w1", "l1"]);

    let hits = run(Filter::all().eq("stage", "new")).await;
    assert_eq!(ids(&hits), ["n1", "n2"], "equality keeps the order");
    let hits = run(Filter::all().eq("hot", true)).await;
    assert_eq!(id_set(&hits), ["n1", "q1", "l1"].into());
    let hits = run(Filter::all().eq("score", 4)).await;
    assert_eq!(ids(&hits), ["w1"]);
    let hits = run(Filter::all().eq("weight", 1.5)).await;
    assert_eq!(ids(&hits), ["q1"]);
    let hits = run(Filter::all().eq("score", 3.0)).await;
    assert_eq!(
        ids(&hits),
        ["q1"],
        "integers and floats compare numerically"
    );

    let hits = run(Filter::all().is_in("stage", ["won", "lost", "nope"])).await;
    assert_eq!(id_set(&hits), ["w1", "l1"].into());
    let hits = run(Filter::all().is_in("score", [1, 5])).await;
    assert_eq!(id_set(&hits), ["n1", "l1"].into());

    let hits = run(Filter::all()
        .eq("hot", true)
        .is_in("stage", ["new", "lost"]))
    .await;
    assert_eq!(ids(&hits), ["n1", "l1"], "conjunction");
    let hits = run(Filter::all().eq("hot", true).eq("stage", "won")).await;
    assert!(hits.is_empty(), "conjunction with no match: {hits:?}");
    let hits = run(Filter::all().eq("missing", "x")).await;
    assert!(hits.is_empty(), "missing field: {hits:?}");
    let hits = run(Filter::all().is_in("stage", Vec::<MetaValue>::new())).await;
    assert!(hits.is_empty(), "empty $in: {hits:?}");

    let top1 = query(store, &ns, &q, 1, &Filter::all().eq("hot", false)).await;
    assert_eq!(ids(&top1), ["n2"], "k applies after the filter");
}

async fn tenants_are_isolated(store: &dyn VectorStore) {
    let run = Uuid::new_v4();
    // Names chosen so that a lossy escape (e.g. '.' -> '_') would collide.
    let a = Namespace::new(format!("acme.{run}"), "leads");
    let b = Namespace::new(format!("acme_{run}"), "leads");
    upsert(
        store,
        &a,
        vec![Item::new("x", vec![1.0, 0.0]).document("secret of a")],
    )
    .await;
    assert_eq!(store.count(&b).await.expect("count b"), 0);
    assert!(
        query(store, &b, &[1.0, 0.0], 10, &Filter::all())
            .await
            .is_empty()
    );
    assert!(
        store
            .get(&b, &strings(&["x"]))
            .await
            .expect("get b")
            .is_empty()
    );

    // b may even use another dimension and the same ids.
    upsert(
        store,
        &b,
        vec![Item::new("x", vec![0.0, 0.0, 1.0]).document("b's")],
    )
    .await;
    store.delete(&b, &strings(&["x"])).await.expect("delete b");
    assert_eq!(store.count(&b).await.expect("count b"), 0);

    let hits = query(store, &a, &[1.0, 0.0], 10, &Filter::all()).await;
    assert_eq!(ids(&hits), ["x"]);
    assert_eq!(hits[0].document.as_deref(), Some("secret of a"));
    assert_eq!(store.count(&a).await.expect("count a"), 1);
}

async fn dimension_is_fixed_by_the_first_upsert(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(store, &ns, vec![Item::new("a", vec![1.0, 0.0, 0.0])]).await;

    let err = store
        .upsert(&ns, vec![Item::new("b", vec![1.0, 0.0, 0.0, 0.0])])
        .await
        .expect_err("4 into 3");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 3,
                got: 4,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains('3') && message.contains('4'), "{message}");

    let err = store
        .query(&ns, &[1.0, 0.0], 1, &Filter::all())
        .await
        .expect_err("query with 2");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );

    // A mixed batch in a fresh collection is refused as a whole.
    let fresh = Namespace::new(ns.tenant.clone(), "other");
    let err = store
        .upsert(
            &fresh,
            vec![
                Item::new("a", vec![1.0, 0.0]),
                Item::new("b", vec![1.0, 0.0, 0.0]),
            ],
        )
        .await
        .expect_err("mixed batch");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.count(&fresh).await.expect("count"), 0);

    // Deleting everything does not unfix the dimension.
    store.delete(&ns, &strings(&["a"])).await.expect("delete");
    let err = store
        .upsert(&ns, vec![Item::new("c", vec![1.0, 0.0])])
        .await
        .expect_err("2 into emptied 3");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.count(&ns).await.expect("count"), 0);
}

async fn k_larger_than_count(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(
        store,
        &ns,
        vec![
            Item::new("a", vec![1.0, 0.0]),
            Item::new("b", vec![0.0, 1.0]),
            Item::new("c", vec![1.0, 1.0]),
        ],
    )
    .await;
    let hits = query(store, &ns, &[1.0, 0.0], 100, &Filter::all()).await;
    assert_eq!(ids(&hits), ["a", "c", "b"]);
    let hits = query(store, &ns, &[1.0, 0.0], usize::MAX, &Filter::all()).await;
    assert_eq!(ids(&hits), ["a", "c", "b"]);
    assert!(
        query(store, &ns, &[1.0, 0.0], 0, &Filter::all())
            .await
            .is_empty()
    );
}

async fn empty_collection_gives_nothing(store: &dyn VectorStore) {
    let ns = ns("leads");
    assert!(
        query(store, &ns, &[1.0, 0.0], 5, &Filter::all())
            .await
            .is_empty()
    );
    assert!(
        store
            .get(&ns, &strings(&["a"]))
            .await
            .expect("get")
            .is_empty()
    );
    assert_eq!(store.count(&ns).await.expect("count"), 0);
    upsert(store, &ns, vec![Item::new("a", vec![1.0, 0.0])]).await;
    store.delete(&ns, &strings(&["a"])).await.expect("delete");
    assert!(
        query(store, &ns, &[1.0, 0.0], 5, &Filter::all())
            .await
            .is_empty()
    );
}

async fn get_by_ids(store: &dyn VectorStore) {
    let ns = ns("leads");
    upsert(
        store,
        &ns,
        vec![
            Item::new("a", vec![3.0, 4.0, 0.0])
                .document("doc a")
                .meta("s", "text")
                .meta("i", -42)
                .meta("f", 0.5)
                .meta("b", false),
            Item::new("b", vec![0.0, 0.0, 2.0]),
            Item::new("c", vec![1.0, 0.0, 0.0]),
        ],
    )
    .await;
    let items = store
        .get(&ns, &strings(&["c", "missing", "a", "c"]))
        .await
        .expect("get");
    assert_eq!(
        items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["c", "a"],
        "request order, missing ids left out, repeats collapsed"
    );
    let a = &items[1];
    for (got, want) in a.vector.iter().zip([0.6, 0.8, 0.0]) {
        assert!((got - want).abs() < 1e-5, "unit-normalised: {:?}", a.vector);
    }
    assert_eq!(a.document.as_deref(), Some("doc a"));
    assert_eq!(a.metadata["s"], MetaValue::Str("text".into()));
    assert_eq!(a.metadata["i"], MetaValue::Int(-42));
    assert_eq!(a.metadata["f"], MetaValue::Float(0.5));
    assert_eq!(a.metadata["b"], MetaValue::Bool(false));
    assert_eq!(items[0].document, None);
    assert!(store.get(&ns, &[]).await.expect("get none").is_empty());
}

async fn invalid_input_is_refused(store: &dyn VectorStore) {
    let ns = ns("leads");
    for (what, items) in [
        ("zero vector", vec![Item::new("a", vec![0.0, 0.0])]),
        ("NaN", vec![Item::new("a", vec![f32::NAN, 1.0])]),
        ("empty vector", vec![Item::new("a", vec![])]),
        ("empty id", vec![Item::new("", vec![1.0, 0.0])]),
        (
            "duplicate id",
            vec![
                Item::new("a", vec![1.0, 0.0]),
                Item::new("a", vec![0.0, 1.0]),
            ],
        ),
        (
            "bad key",
            vec![Item::new("a", vec![1.0, 0.0]).meta("$x", 1)],
        ),
        (
            "NaN metadata",
            vec![Item::new("a", vec![1.0, 0.0]).meta("x", f64::NAN)],
        ),
    ] {
        let err = store.upsert(&ns, items).await.expect_err(what);
        assert!(
            matches!(err, VectorError::InvalidInput(_)),
            "{what}: {err:?}"
        );
    }
    assert_eq!(store.count(&ns).await.expect("count"), 0);
    let bad = Namespace::new("t", "no_underscores");
    let err = store.count(&bad).await.expect_err("bad collection");
    assert!(
        matches!(err, VectorError::InvalidNamespace { .. }),
        "{err:?}"
    );
    let err = store
        .query(&ns, &[0.0, 0.0], 1, &Filter::all())
        .await
        .expect_err("zero query");
    assert!(matches!(err, VectorError::InvalidInput(_)), "{err:?}");
}

async fn concurrent_writers_in_one_collection(store: &dyn VectorStore) {
    let ns = ns("leads");
    let writers = (0..6).map(|w| {
        let ns = ns.clone();
        async move {
            for batch in 0..5 {
                let items = (0..4)
                    .map(|i| Item::new(format!("w{w}-{batch}-{i}"), vec![1.0, w as f32, i as f32]))
                    .collect();
                store.upsert(&ns, items).await.expect("concurrent upsert");
            }
        }
    });
    futures_join_all(writers).await;
    assert_eq!(store.count(&ns).await.expect("count"), 6 * 5 * 4);
}

/// Polls futures concurrently on the current task (no extra dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(
    futures: impl IntoIterator<Item = F>,
) {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(move |cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Running the suite against both implementations.

fn embedded() -> (TempDir, Embedded) {
    let dir = TempDir::new().expect("temp dir");
    let store = Embedded::open(dir.path()).expect("open embedded");
    (dir, store)
}

fn chroma() -> Chroma {
    Chroma::new(ChromaConfig::new(support::chroma_server::url())).expect("chroma client")
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded_conformance {
            $(
                #[tokio::test]
                async fn $test() {
                    let (_dir, store) = super::embedded();
                    super::$test(&store).await;
                }
            )*
        }
        mod chroma_conformance {
            $(
                #[tokio::test]
                async fn $test() {
                    let store = super::chroma();
                    super::$test(&store).await;
                }
            )*
        }
    };
}

conformance!(
    nearest_first_with_cosine_similarity,
    ties_break_by_id,
    upsert_replaces_by_id,
    delete_removes_items,
    count_tracks_items,
    filters_select_by_metadata,
    tenants_are_isolated,
    dimension_is_fixed_by_the_first_upsert,
    k_larger_than_count,
    empty_collection_gives_nothing,
    get_by_ids,
    invalid_input_is_refused,
    concurrent_writers_in_one_collection,
);

// ---------------------------------------------------------------------------------------------
// Embedded only: durability and concurrency.

#[tokio::test]
async fn embedded_survives_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let leads = ns("leads");
    let deals = Namespace::new(leads.tenant.clone(), "deals");
    let other = ns("leads");
    {
        let store = Embedded::open(dir.path()).expect("open");
        upsert(
            &store,
            &leads,
            vec![
                Item::new("a", vec![1.0, 0.0]).document("A").meta("n", 1),
                Item::new("b", vec![0.0, 1.0]),
                Item::new("c", vec![1.0, 1.0]),
            ],
        )
        .await;
        upsert(
            &store,
            &leads,
            vec![Item::new("b", vec![-1.0, 0.2]).meta("v", 2)],
        )
        .await;
        store
            .delete(&leads, &strings(&["c"]))
            .await
            .expect("delete");
        upsert(&store, &deals, vec![Item::new("d", vec![0.0, 0.0, 1.0])]).await;
        upsert(&store, &other, vec![Item::new("gone", vec![1.0])]).await;
        store
            .delete(&other, &strings(&["gone"]))
            .await
            .expect("delete");
    }
    let store = Embedded::open(dir.path()).expect("reopen");
    assert_eq!(store.count(&leads).await.expect("count"), 2);
    let hits = query(&store, &leads, &[1.0, 0.0], 10, &Filter::all()).await;
    assert_eq!(ids(&hits), ["a", "b"]);
    assert_eq!(hits[0].document.as_deref(), Some("A"));
    assert_eq!(hits[0].metadata["n"], MetaValue::Int(1));
    assert_eq!(hits[1].metadata["v"], MetaValue::Int(2));
    assert_eq!(store.count(&deals).await.expect("count"), 1);
    assert_eq!(store.count(&other).await.expect("count"), 0);
    let err = store
        .upsert(&other, vec![Item::new("x", vec![1.0, 0.0])])
        .await
        .expect_err("dimension survives reopen");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn embedded_compaction_keeps_data() {
    let dir = TempDir::new().expect("temp dir");
    let ns = ns("leads");
    let options = EmbeddedOptions {
        compact_min_bytes: 4096,
        compact_ratio: 2.0,
    };
    let rounds: i64 = 60;
    let mut max_log = 0;
    {
        let store = Embedded::open_with(dir.path(), options.clone()).expect("open");
        for round in 0..rounds {
            let items = (0..10)
                .map(|i| {
                    Item::new(format!("id{i}"), vec![1.0, i as f32, round as f32])
                        .meta("round", round)
                })
                .collect();
            upsert(&store, &ns, items).await;
            max_log = max_log.max(store.log_size(&ns).expect("log size"));
        }
        // Ten items of about 42 bytes each; without compaction the log would reach ~26 KB.
        let one_round = 10 * (4 + 3 + 12 + 1 + 4 + 4 + 5 + 1 + 8);
        assert!(
            max_log < options.compact_min_bytes + 2 * one_round,
            "log grew to {max_log} bytes: compaction did not run"
        );
        store.delete(&ns, &strings(&["id0"])).await.expect("delete");
    }
    let store = Embedded::open_with(dir.path(), options).expect("reopen");
    assert_eq!(store.count(&ns).await.expect("count"), 9);
    let items = store
        .get(&ns, &strings(&["id3", "id0"]))
        .await
        .expect("get");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].metadata["round"], MetaValue::Int(rounds - 1));

    // Explicit compaction of an emptied collection keeps its dimension.
    store
        .delete(&ns, &(0..10).map(|i| format!("id{i}")).collect::<Vec<_>>())
        .await
        .expect("delete all");
    store.compact(&ns).await.expect("compact");
    drop(store);
    let store = Embedded::open(dir.path()).expect("reopen");
    assert_eq!(store.count(&ns).await.expect("count"), 0);
    let err = store
        .upsert(&ns, vec![Item::new("x", vec![1.0, 0.0])])
        .await
        .expect_err("dimension survives compaction");
    assert!(
        matches!(
            err,
            VectorError::DimensionMismatch {
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn embedded_cuts_a_torn_tail_on_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let ns = ns("leads");
    {
        let store = Embedded::open(dir.path()).expect("open");
        upsert(&store, &ns, vec![Item::new("a", vec![1.0, 0.0])]).await;
        upsert(&store, &ns, vec![Item::new("b", vec![0.0, 1.0])]).await;
    }
    // Simulate a crash in the middle of appending a third frame.
    let log = walk(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "vlog"))
        .expect("log file");
    let len = std::fs::metadata(&log).expect("metadata").len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open log");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 2, 2])
            .expect("write garbage");
    }
    let store = Embedded::open(dir.path()).expect("reopen");
    assert_eq!(store.count(&ns).await.expect("count"), 2);
    assert_eq!(
        std::fs::metadata(&log).expect("metadata").len(),
        len,
        "tail cut off"
    );
    upsert(&store, &ns, vec![Item::new("c", vec![1.0, 1.0])]).await;
    drop(store);
    let store = Embedded::open(dir.path()).expect("reopen again");
    assert_eq!(store.count(&ns).await.expect("count"), 3);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_concurrent_upserts_from_tasks() {
    let dir = TempDir::new().expect("temp dir");
    let store = Embedded::open(dir.path()).expect("open");
    let shared = ns("leads");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let shared = shared.clone();
            let own = Namespace::new(format!("{}-{t}", shared.tenant), "leads");
            tokio::spawn(async move {
                for batch in 0..20 {
                    let items: Vec<Item> = (0..5)
                        .map(|i| {
                            Item::new(format!("t{t}-b{batch}-i{i}"), vec![1.0, t as f32, i as f32])
                                .meta("task", t)
                        })
                        .collect();
                    store
                        .upsert(&shared, items.clone())
                        .await
                        .expect("upsert shared");
                    store.upsert(&own, items).await.expect("upsert own");
                    let hits = store
                        .query(
                            &shared,
                            &[1.0, t as f32, 0.0],
                            3,
                            &Filter::all().eq("task", t),
                        )
                        .await
                        .expect("query");
                    assert!(hits.iter().all(|h| h.id.starts_with(&format!("t{t}-"))));
                }
                assert_eq!(store.count(&own).await.expect("count own"), 100);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(store.count(&shared).await.expect("count"), 800);
    drop(store);
    let store = Embedded::open(dir.path()).expect("reopen");
    assert_eq!(store.count(&shared).await.expect("count"), 800);
}

#[tokio::test]
async fn embedded_matches_brute_force() {
    let (_dir, store) = embedded();
    let ns = ns("leads");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2000) as f32 / 1000.0 - 1.0
    };
    let vectors: Vec<(String, Vec<f32>)> = (0..500)
        .map(|i| (format!("v{i}"), (0..16).map(|_| next()).collect()))
        .collect();
    upsert(
        &store,
        &ns,
        vectors
            .iter()
            .map(|(id, v)| Item::new(id.clone(), v.clone()))
            .collect(),
    )
    .await;
    store
        .delete(&ns, &strings(&["v1", "v2", "v3"]))
        .await
        .expect("delete");
    let live: Vec<_> = vectors
        .iter()
        .filter(|(id, _)| !["v1", "v2", "v3"].contains(&id.as_str()))
        .cloned()
        .collect();
    let q: Vec<f32> = (0..16).map(|_| next()).collect();
    let exact = aida_ai::vector::brute_force_top_k(&live, &q, 10);
    let hits = query(&store, &ns, &q, 10, &Filter::all()).await;
    assert_eq!(
        ids(&hits),
        exact.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()
    );
    for (hit, (_, sim)) in hits.iter().zip(&exact) {
        assert_close(hit.similarity, *sim, &hit.id);
    }
    let approx: Vec<&str> = ids(&hits);
    let exact_ids: Vec<&str> = exact.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(aida_ai::vector::recall_at_k(&exact_ids, &approx), 1.0);
}

#[tokio::test]
async fn chroma_matches_brute_force_recall() {
    let store = chroma();
    let ns = ns("leads");
    let vectors: Vec<(String, Vec<f32>)> = (0..200)
        .map(|i| {
            let x = i as f32;
            (
                format!("v{i}"),
                vec![(x * 0.37).sin(), (x * 0.11).cos(), (x * 0.05).sin(), 1.0],
            )
        })
        .collect();
    upsert(
        &store,
        &ns,
        vectors
            .iter()
            .map(|(id, v)| Item::new(id.clone(), v.clone()))
            .collect(),
    )
    .await;
    let q = [0.3, -0.2, 0.9, 0.5];
    let exact = aida_ai::vector::brute_force_top_k(&vectors, &q, 10);
    let hits = query(&store, &ns, &q, 10, &Filter::all()).await;
    let exact_ids: Vec<&str> = exact.iter().map(|(id, _)| id.as_str()).collect();
    let recall = aida_ai::vector::recall_at_k(&exact_ids, &ids(&hits));
    assert!(recall >= 0.9, "recall@10 {recall}");
    assert_close(hits[0].similarity, exact[0].1, "top hit");
}

#[test]
fn store_is_object_safe() {
    fn takes(_: Arc<dyn VectorStore>) {}
    let (_dir, store) = embedded();
    takes(Arc::new(store));
}
