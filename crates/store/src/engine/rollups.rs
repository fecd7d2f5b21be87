//! The statements of a maintenance pass (`common::maintain`) for every [`Backend`]: the
//! roll-up watermarks and retention pruning are the same SQL on both; only the recomputing of
//! a range's buckets is the backend's own ([`Rollups`](super::Rollups)).

use sqlx::{ColumnIndex, Database, Encode, Executor, IntoArguments, Type};

use super::{Backend, Column, Connections, RowsAffected, TxKind};
use crate::common::{HOUR_MS, MaintenanceOps, ctx, floor_to, from_ms, tier_name};
use crate::{Resolution, Result};

/// A stored time as ms since the epoch (maintenance plans in ms).
fn time_ms<B: Connections>(at: Option<B::Time>) -> Result<Option<i64>> {
    Ok(at
        .map(B::from_db)
        .transpose()?
        .map(|t| t.timestamp_millis()))
}

impl<B: Backend> MaintenanceOps for B
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    i64: Column<B::Db>,
{
    async fn watermark(&self, tier: Resolution) -> Result<Option<i64>> {
        let at: Option<B::Time> =
            sqlx::query_scalar("SELECT done_until FROM rollup_state WHERE tier = $1")
                .bind(tier_name(tier))
                .fetch_one(&self.core().writer)
                .await
                .map_err(ctx("maintain: read watermark"))?;
        time_ms::<B>(at)
    }

    async fn first_source_row(&self, tier: Resolution, from: i64) -> Result<Option<i64>> {
        let sql = if tier == Resolution::Minute {
            "SELECT MIN(at) FROM metric_samples WHERE at >= $1"
        } else {
            "SELECT MIN(bucket) FROM metric_minute WHERE bucket >= $1"
        };
        let at: Option<B::Time> = sqlx::query_scalar(sql)
            .bind(B::to_db(from_ms(from)?))
            .fetch_one(&self.core().writer)
            .await
            .map_err(ctx("maintain: find next rows"))?;
        time_ms::<B>(at)
    }

    async fn roll_range(&self, tier: Resolution, start: i64, end: i64) -> Result<u64> {
        let grouped = self.group_range(tier, start, end).await?;
        let mut tx = self.begin(TxKind::Plain).await?;
        let written = B::write_range(&mut tx, tier, start, end, grouped).await?;
        sqlx::query("UPDATE rollup_state SET done_until = $1 WHERE tier = $2")
            .bind(B::to_db(from_ms(end)?))
            .bind(tier_name(tier))
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: watermark"))?;
        if tier == Resolution::Minute {
            // Recomputed minutes change their hours.
            sqlx::query(
                "UPDATE rollup_state SET done_until = $1 WHERE tier = 'hour' AND done_until > $1",
            )
            .bind(B::to_db(from_ms(floor_to(start, HOUR_MS))?))
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: hour watermark"))?;
        }
        tx.commit().await.map_err(ctx("maintain: commit"))?;
        Ok(written)
    }

    async fn advance_watermark(&self, tier: Resolution, end: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollup_state SET done_until = $1 \
             WHERE tier = $2 AND (done_until IS NULL OR done_until < $1)",
        )
        .bind(B::to_db(from_ms(end)?))
        .bind(tier_name(tier))
        .execute(&self.core().writer)
        .await
        .map_err(ctx("maintain: watermark"))?;
        Ok(())
    }

    async fn prune_batch(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff: i64,
        batch: i64,
    ) -> Result<u64> {
        Ok(
            sqlx::query(&B::delete_some(table, &format!("{column} < $1")))
                .bind(B::to_db(from_ms(cutoff)?))
                .bind(batch)
                .execute(&self.core().writer)
                .await
                .map_err(ctx("maintain: prune"))?
                .rows_affected(),
        )
    }
}
