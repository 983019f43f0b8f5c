//! The built-in echo app: the caller hears themselves through the whole pipeline.
//!
//! It looks like a provider stream to the call driver (same [`ProviderHandle`], same channel types and bounds),
//! so the echoed audio goes through everything an agent's audio does: re-framing, channels, playout, pacing.
//! Each `ToAgent::Media(frame)` comes straight back as `FromAgent::Frame(frame.payload)`; DTMF and mark echoes
//! are ignored; `Stop` (or the sender dropped) ends it with `FromAgent::Closed(Stopped)`. Per frame: no
//! allocation (the frame travels by value through both channels).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::mpsc;

use super::provider::{AgentSink, CloseReason, FromAgent, ProviderHandle, ProviderStats, ToAgent};
use crate::metrics::{Direction as MetricDirection, TenantMetrics};

/// Spawns the echo app with channels of `capacity` messages each. A full return channel drops the frame
/// (counted in `dropped_slow_consumer`), as for a real agent.
pub fn spawn_echo(capacity: usize, metrics: Option<TenantMetrics>) -> ProviderHandle {
    let capacity = capacity.max(1);
    let (to_tx, mut to_rx) = mpsc::channel::<ToAgent>(capacity);
    let (from_tx, from_rx) = mpsc::channel::<FromAgent>(capacity);
    let stats = Arc::new(ProviderStats::default());
    let task_stats = stats.clone();
    tokio::spawn(async move {
        let stats = task_stats;
        while let Some(cmd) = to_rx.recv().await {
            match cmd {
                ToAgent::Media(frame) => {
                    stats.media_out.fetch_add(1, Relaxed);
                    // The echo app is the agent: a frame has arrived when this task takes it.
                    if let Some(m) = &metrics {
                        m.frame_latency(MetricDirection::Inbound, frame.t_ingress.elapsed());
                    }
                    let bytes = frame.payload.as_bytes().len() as u64;
                    match from_tx.try_send(FromAgent::Frame(frame.payload)) {
                        Ok(()) => {
                            stats.media_in.fetch_add(1, Relaxed);
                            stats.media_in_bytes.fetch_add(bytes, Relaxed);
                        }
                        Err(_) => {
                            stats.dropped_slow_consumer.fetch_add(1, Relaxed);
                        }
                    }
                }
                ToAgent::Dtmf(_) | ToAgent::MarkPlayed(_) => {}
                ToAgent::Stop => break,
            }
        }
        // Waits for room (the driver is still reading) or fails at once (it has gone).
        if from_tx.send(FromAgent::Closed(CloseReason::Stopped)).await.is_err() {
            stats.dropped_slow_consumer.fetch_add(1, Relaxed);
        }
    });
    let sink = AgentSink::Channel(to_tx.clone());
    ProviderHandle { tx: to_tx, rx: from_rx, stats, sink }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallId, FRAME_SAMPLES, Frame, FrameAudio};
    use crate::tenant::TenantId;
    use std::time::{Duration, Instant};

    fn frame(seq: u64) -> Frame {
        let mut payload = [0u8; FRAME_SAMPLES];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(i as u8);
        }
        Frame {
            tenant: TenantId(0),
            call: CallId(1),
            seq,
            ts: 0,
            payload: FrameAudio::Mulaw(payload),
            t_ingress: Instant::now(),
        }
    }

    async fn recv(rx: &mut mpsc::Receiver<FromAgent>) -> Option<FromAgent> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("timed out")
    }

    #[tokio::test]
    async fn frames_come_back_in_order_and_stop_closes() {
        let mut h = spawn_echo(8, None);
        for seq in 0..5 {
            h.tx.send(ToAgent::Media(frame(seq))).await.unwrap();
            h.tx.send(ToAgent::Dtmf('1')).await.unwrap();
        }
        h.tx.send(ToAgent::MarkPlayed("x".into())).await.unwrap();
        for seq in 0..5 {
            assert_eq!(recv(&mut h.rx).await, Some(FromAgent::Frame(frame(seq).payload)));
        }
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, Some(FromAgent::Closed(CloseReason::Stopped)));
        assert_eq!(recv(&mut h.rx).await, None);
        assert_eq!(h.stats.media_out.load(Relaxed), 5);
        assert_eq!(h.stats.media_in_bytes.load(Relaxed), 5 * FRAME_SAMPLES as u64);
    }

    #[tokio::test]
    async fn dropping_the_sender_closes() {
        let ProviderHandle { tx, mut rx, sink, .. } = spawn_echo(2, None);
        // Every sender: the handle's and the sink's.
        drop((tx, sink));
        assert_eq!(recv(&mut rx).await, Some(FromAgent::Closed(CloseReason::Stopped)));
    }

    #[tokio::test]
    async fn full_return_channel_drops_and_counts() {
        let mut h = spawn_echo(2, None);
        for seq in 0..2 {
            h.tx.send(ToAgent::Media(frame(seq))).await.unwrap();
        }
        // Wait until both are back in the (now full) return channel.
        let stats = h.stats.clone();
        while stats.media_in.load(Relaxed) < 2 {
            tokio::task::yield_now().await;
        }
        h.tx.send(ToAgent::Media(frame(2))).await.unwrap();
        while stats.media_out.load(Relaxed) < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.dropped_slow_consumer.load(Relaxed), 1);
        assert_eq!(recv(&mut h.rx).await, Some(FromAgent::Frame(frame(0).payload)));
        assert_eq!(recv(&mut h.rx).await, Some(FromAgent::Frame(frame(1).payload)));
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, Some(FromAgent::Closed(CloseReason::Stopped)));
    }
}
