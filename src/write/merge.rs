//! Merging consecutive calls into statements (pure: no I/O, unit-tested).
//!
//! Runs of key and creds writes merge into one [`Upsert`] (the last write of a key wins,
//! deletes included); a `clear` is a statement of its own, because it must see what came
//! before it and hide nothing that comes after.

use std::collections::HashMap;

use crate::company::Company;
use crate::config::TtlPolicy;
use crate::db::sql::Upsert;
use crate::value::StoredValue;

use super::Op;

/// One statement's worth of work.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// Deletes, upserts and creds in one statement.
    Upsert(Box<Upsert<'a>>),
    /// Every key and the creds of one company.
    Clear(&'a str),
}

/// Key writes and creds merged from consecutive calls, keyed for last-write-wins.
#[derive(Default)]
struct Merged<'a> {
    keys: HashMap<(&'a str, &'a str, &'a str), Option<&'a StoredValue>>,
    creds: HashMap<&'a str, &'a StoredValue>,
}

impl<'a> Merged<'a> {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.creds.is_empty()
    }

    fn into_upsert(self, ttl: &TtlPolicy) -> Upsert<'a> {
        let mut u = Upsert::default();
        for ((c, t, i), v) in self.keys {
            match v {
                None => {
                    u.del_company.push(c);
                    u.del_type.push(t);
                    u.del_id.push(i);
                }
                Some(v) => {
                    u.put_company.push(c);
                    u.put_type.push(t);
                    u.put_id.push(i);
                    u.put_value.push(v.as_str());
                    u.put_ttl_secs.push(ttl.ttl(t).as_secs_f64());
                }
            }
        }
        for (c, v) in self.creds {
            u.creds_company.push(c);
            u.creds_value.push(v.as_str());
        }
        u
    }
}

/// Splits `ops` (in call order) into statements that, run in order, have the same effect.
pub(crate) fn plan<'a>(ops: &[(&'a Company, &'a Op)], ttl: &TtlPolicy) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut cur = Merged::default();
    for (company, op) in ops {
        match op {
            Op::Keys(writes) => {
                for w in writes {
                    cur.keys
                        .insert((&company.id, &w.key_type, &w.key_id), w.value.as_ref());
                }
            }
            Op::Creds(v) => {
                cur.creds.insert(&company.id, v);
            }
            Op::Clear => {
                if !cur.is_empty() {
                    steps.push(Step::Upsert(Box::new(
                        std::mem::take(&mut cur).into_upsert(ttl),
                    )));
                }
                steps.push(Step::Clear(&company.id));
            }
        }
    }
    if !cur.is_empty() {
        steps.push(Step::Upsert(Box::new(cur.into_upsert(ttl))));
    }
    steps
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::company::Companies;
    use crate::value::KeyWrite;

    fn v(s: &str) -> StoredValue {
        StoredValue::from_json(s).unwrap()
    }

    #[test]
    fn last_write_of_a_key_wins_and_deletes_merge() {
        let cs = Companies::new(1, false);
        let a: Arc<Company> = cs.get("a");
        let ops = [
            Op::Keys(vec![
                KeyWrite::put("session", "1", v("1")).unwrap(),
                KeyWrite::put("pre-key", "9", v("9")).unwrap(),
            ]),
            Op::Keys(vec![
                KeyWrite::put("session", "1", v("2")).unwrap(),
                KeyWrite::delete("pre-key", "9").unwrap(),
            ]),
            Op::Creds(v("{\"c\":1}")),
            Op::Creds(v("{\"c\":2}")),
        ];
        let refs: Vec<(&Company, &Op)> = ops.iter().map(|o| (&*a, o)).collect();
        let steps = plan(&refs, &TtlPolicy::default());
        assert_eq!(steps.len(), 1);
        let Step::Upsert(u) = &steps[0] else {
            panic!("expected one upsert: {steps:?}")
        };
        assert_eq!(u.put_id, vec!["1"]);
        assert_eq!(u.put_value, vec!["2"]);
        assert_eq!(u.del_id, vec!["9"]);
        assert_eq!(u.creds_value, vec!["{\"c\":2}"]);
        assert_eq!(
            u.put_ttl_secs,
            vec![TtlPolicy::default().ttl("session").as_secs_f64()]
        );
        assert!(u.put_ttl_secs[0] >= Duration::from_secs(86_400).as_secs_f64());
    }

    #[test]
    fn a_clear_splits_the_statements_in_order() {
        let cs = Companies::new(1, false);
        let (a, b) = (cs.get("a"), cs.get("b"));
        let ops = [
            (
                &*a,
                Op::Keys(vec![KeyWrite::put("session", "1", v("1")).unwrap()]),
            ),
            (&*b, Op::Creds(v("1"))),
            (&*a, Op::Clear),
            (
                &*a,
                Op::Keys(vec![KeyWrite::put("session", "2", v("2")).unwrap()]),
            ),
        ];
        let refs: Vec<(&Company, &Op)> = ops.iter().map(|(c, o)| (*c, o)).collect();
        let steps = plan(&refs, &TtlPolicy::default());
        assert!(matches!(
            steps.as_slice(),
            [Step::Upsert(_), Step::Clear("a"), Step::Upsert(_)]
        ));
        let Step::Upsert(last) = &steps[2] else {
            unreachable!()
        };
        assert_eq!(last.put_id, vec!["2"]);
    }

    #[test]
    fn nothing_to_do_is_no_statement() {
        let cs = Companies::new(1, false);
        let a = cs.get("a");
        let empty = Op::Keys(Vec::new());
        assert!(plan(&[(&*a, &empty)], &TtlPolicy::default()).is_empty());
    }
}
