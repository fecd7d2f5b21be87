//! The subscription root (graphql-ws): a VM's samples and the status changes of the VMs the
//! caller may see, each checked against [`crate::authz`] as it happens.

use async_graphql::futures_util::Stream;
use async_graphql::{Context, ID, Subscription};

use super::context::{GqlResult, caller};
use super::types::{MetricsSnapshot, VmStatusEvent};
use crate::error::ApiError;
use crate::state::Api;
use crate::work_limiter::Principal;
use infinibay_control::event::{BusEvent, Filter, Subscription, Topic};

/// Subscriptions.
pub struct SubscriptionRoot;

/// A stream that first checks access (`check`), then yields what `next` makes of each bus
/// event; it ends when `next` says access was lost (`Err(())`) or the bus ends.
fn guarded_stream<T, C, N, NF>(
    api: Option<Api>,
    check: C,
    filter: Filter,
    next: N,
) -> impl Stream<Item = GqlResult<T>> + Send + 'static
where
    T: Send + 'static,
    C: std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
    N: Fn(Api, BusEvent) -> NF + Send + Sync + 'static,
    NF: std::future::Future<Output = Result<Option<T>, ()>> + Send + 'static,
{
    enum Phase<C> {
        Check(std::pin::Pin<Box<C>>),
        Live(Subscription),
        Done,
    }
    futures_util::stream::unfold(
        (Phase::Check(Box::pin(check)), api, filter, next),
        |(phase, api, filter, next)| async move {
            let Some(state) = api.clone() else {
                return match phase {
                    Phase::Done => None,
                    _ => Some((
                        Err(ApiError::internal("API state missing").into()),
                        (Phase::Done, api, filter, next),
                    )),
                };
            };
            let mut sub = match phase {
                Phase::Done => return None,
                Phase::Check(check) => match check.await {
                    Ok(()) => state.control().subscribe(filter.clone()).await,
                    Err(e) => return Some((Err(e.into()), (Phase::Done, api, filter, next))),
                },
                Phase::Live(sub) => sub,
            };
            loop {
                let event = sub.next_event().await?;
                match next(state.clone(), event).await {
                    Ok(Some(item)) => {
                        return Some((Ok(item), (Phase::Live(sub), api, filter, next)));
                    }
                    Ok(None) => continue,
                    Err(()) => return None,
                }
            }
        },
    )
}

#[Subscription]
impl SubscriptionRoot {
    /// Every new sample of a VM the caller may see.
    async fn vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
    ) -> impl Stream<Item = GqlResult<MetricsSnapshot>> + use<> {
        let user = caller(ctx);
        let api = ctx.data::<Api>().ok().cloned();
        let check = {
            let (user, api, vm) = (user.clone(), api.clone(), vm_id.to_string());
            async move {
                let user = user?;
                match api {
                    // The check reads the store: in the subscriber's database turn, so that
                    // 20,000 subscriptions queue behind their own user and nobody else.
                    Some(api) => {
                        let _turn = api.turn(Principal::User(user.id)).await?;
                        api.visible_vm(&user, &vm).await.map(|_| ())
                    }
                    None => Err(ApiError::internal("API state missing")),
                }
            }
        };
        let filter = Filter {
            vm_id: Some(vm_id.to_string()),
            topic: Some(Topic::Metrics),
        };
        let user = user.ok();
        guarded_stream(api, check, filter, move |api: Api, event: BusEvent| {
            let user = user.clone();
            async move {
                let (Some(user), BusEvent::Metrics(sample)) = (user, event) else {
                    return Ok(None);
                };
                // Ownership may change while subscribed.
                if !api.may_see(&user, &sample.vm_id).await {
                    return Err(());
                }
                Ok(Some(MetricsSnapshot::from(sample.as_ref())))
            }
        })
    }

    /// Status changes of the VMs the caller may see.
    async fn vm_status(
        &self,
        ctx: &Context<'_>,
    ) -> impl Stream<Item = GqlResult<VmStatusEvent>> + use<> {
        let user = caller(ctx);
        let api = ctx.data::<Api>().ok().cloned();
        let check = {
            let user = user.clone();
            async move { user.map(|_| ()) }
        };
        let user = user.ok();
        guarded_stream(
            api,
            check,
            Filter::topic(Topic::Status),
            move |api: Api, event: BusEvent| {
                let user = user.clone();
                async move {
                    let (Some(user), BusEvent::Status(status)) = (user, event) else {
                        return Ok(None);
                    };
                    if !api.may_see(&user, &status.vm_id).await {
                        return Ok(None);
                    }
                    Ok(Some(VmStatusEvent {
                        vm_id: ID(status.vm_id.clone()),
                        status: status.status.into(),
                        at: status.at,
                    }))
                }
            },
        )
    }
}
