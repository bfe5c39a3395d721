//! Concurrent load on stores, counted per client key.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use rate_limit_core::{Limit, Store};

/// Admissions per key when, for every key, `tasks` tasks at once each make `each` checks of
/// cost 1 against `limits`; a key's task `t` goes to `stores[t % stores.len()]`. A store error
/// panics, naming the key.
///
/// # Panics
///
/// If `stores` is empty, or a check fails.
pub async fn admitted_per_key<S: Store>(
    stores: &[Arc<S>],
    keys: &[String],
    limits: &[Limit],
    tasks: usize,
    each: usize,
) -> HashMap<String, u32> {
    let mut handles = Vec::new();
    for key in keys {
        for t in 0..tasks {
            let store = Arc::clone(&stores[t % stores.len()]);
            let (key, limits) = (key.clone(), limits.to_vec());
            handles.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..each {
                    let d = store.check(&key, &limits, NonZeroU32::MIN).await;
                    admitted += u32::from(d.unwrap_or_else(|e| panic!("{key}: {e}")).is_allowed());
                }
                (key, admitted)
            }));
        }
    }
    let mut per_key = HashMap::new();
    for h in handles {
        let (key, n) = h.await.unwrap();
        *per_key.entry(key).or_default() += n;
    }
    per_key
}
