//! Previews (`--dry-run`): the hub asks on `optikon.preview.ask.<cluster>` what a desired
//! release would change here, and is answered on the reply subject it chose. Nothing is
//! applied, stored or acknowledged: a preview that goes unanswered is simply asked again.

use futures::StreamExt;
use optikon_core::message::{ApiError, DesiredRelease, ErrorCode, Reply, decode};
use optikon_core::preview::ClusterPreview;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::trace;
use tracing::Instrument;

use crate::charts::ChartUnavailable;
use crate::{Executor, ExecutorError, nats_err};

/// Previews worked on at once; each renders a chart and asks the API server once per object.
const CONCURRENT_PREVIEWS: usize = 4;

impl Executor {
    /// Answers previews until shutdown. Replicas share them through a queue group.
    pub(crate) async fn answer_previews(&self, shutdown: Shutdown) -> Result<(), ExecutorError> {
        let asked = subject::preview_ask(&self.config.cluster);
        let questions = self
            .client
            .queue_subscribe(asked.clone(), "executor".into())
            .await
            .map_err(nats_err)?;
        tracing::info!(subject = %asked, "previews answered");
        questions
            .take_until(shutdown.wait())
            .for_each_concurrent(CONCURRENT_PREVIEWS, |message| self.answer_preview(message))
            .await;
        Ok(())
    }

    async fn answer_preview(&self, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else {
            tracing::debug!("preview without a reply subject; ignored");
            return;
        };
        let span = tracing::info_span!("preview");
        trace::adopt(&span, message.headers.as_ref());
        async {
            let answer: Reply<ClusterPreview> = self.preview(&message.payload).await.into();
            let body = serde_json::to_vec(&answer).expect("preview serializes");
            if let Err(error) = self.client.publish(reply, body.into()).await {
                tracing::warn!(%error, "could not answer a preview");
            }
        }
        .instrument(span)
        .await
    }

    async fn preview(&self, body: &[u8]) -> Result<ClusterPreview, ApiError> {
        let desired: DesiredRelease = decode("preview", body)?;
        if desired.cluster != self.config.cluster {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "this is cluster {}'s executor; a preview for {} was sent here",
                    self.config.cluster, desired.cluster
                ),
            ));
        }
        tracing::info!(release = %desired.release, namespace = %desired.namespace, action = %desired.action, "preview asked");
        let chart = match &desired.chart {
            Some(pin) => match self.fetch_chart(pin).await {
                Ok(bytes) => Some(bytes),
                Err(
                    ChartUnavailable::Local(reason)
                    | ChartUnavailable::Unreachable(reason)
                    | ChartUnavailable::Lost(reason),
                ) => return Ok(ClusterPreview::failed(&desired.cluster, reason)),
            },
            None => None,
        };
        self.target
            .preview(&desired, chart.as_deref())
            .await
            .map_err(|error| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("the cluster could not be asked: {error}; try again"),
                )
            })
    }
}
