//! PostgreSQL's roll-ups: a range's buckets recomputed in one `INSERT … SELECT` inside the
//! write transaction (its readers never wait for it, so nothing is grouped beforehand).

use super::PgStore;
use crate::common::{ctx, from_ms};
use crate::engine::{Rollups, Tx, sql};
use crate::{Resolution, Result};

impl Rollups for PgStore {
    type Grouped = ();

    async fn group_range(&self, _tier: Resolution, _start: i64, _end: i64) -> Result<()> {
        Ok(())
    }

    async fn write_range(
        tx: &mut Tx<Self>,
        tier: Resolution,
        start: i64,
        end: i64,
        (): (),
    ) -> Result<u64> {
        Ok(sqlx::query(&sql::rollup::<Self>(tier))
            .bind(from_ms(start)?)
            .bind(from_ms(end)?)
            .execute(&mut **tx)
            .await
            .map_err(ctx("maintain: roll up"))?
            .rows_affected())
    }
}
