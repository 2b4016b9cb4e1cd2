//! Where a device's configured link becomes the [`Link`] its driver talks through: the one
//! place that joins `transport` (which opens connections) and `driver` (which must not know
//! the transport).
//!
//! This module owns turning a `LinkSpec` into an opener and the link's facts. It must not
//! know any protocol beyond the line facts a driver needs (a serial line's inter-frame gap).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::codec::modbus::silent_interval;
use crate::driver::{
    Connection, Link, LinkError, LinkFacts, TopicError, TopicFeed, TopicMessage, Topics,
};
use crate::transport::mqtt::{MqttError, MqttHandle, Subscription};
use crate::transport::{self, LinkSpec, TransportError};

/// The link a device's actor hands its driver: opened (and reopened) by `transport::open`; a
/// topic device's link carries the daemon's MQTT client as its bus.
pub fn for_spec(spec: &LinkSpec, mqtt: Option<&MqttHandle>) -> Link {
    let spec = spec.clone();
    let facts = facts(&spec);
    let bus: Option<Arc<dyn Topics>> = mqtt.map(|m| Arc::new(m.clone()) as Arc<dyn Topics>);
    Link::new(
        facts,
        Box::new(move || {
            let spec = spec.clone();
            let bus = bus.clone();
            Box::pin(async move {
                let c = transport::open(&spec).await.map_err(error)?;
                connection(c, bus)
            })
        }),
    )
}

/// What a driver must honour of `spec` without knowing the medium.
pub fn facts(spec: &LinkSpec) -> LinkFacts {
    match spec {
        LinkSpec::Serial(s) => LinkFacts {
            // The t3.5 silence of a serial line at its baud rate (protocols.md 5.1).
            frame_gap: silent_interval(s.baud),
            per_exchange: false,
        },
        LinkSpec::Tcp(t) => LinkFacts {
            frame_gap: std::time::Duration::ZERO,
            per_exchange: t.connect_per_command,
        },
        LinkSpec::Udp { .. } | LinkSpec::Mqtt { .. } => LinkFacts::default(),
    }
}

fn connection(
    c: transport::Connection,
    bus: Option<Arc<dyn Topics>>,
) -> Result<Connection, LinkError> {
    Ok(match c {
        transport::Connection::Stream(s) => Connection::Stream(Box::new(s)),
        transport::Connection::Datagram(sock) => Connection::Datagram(sock),
        transport::Connection::Topic { topic } => {
            let Some(bus) = bus else {
                return Err(LinkError::Open(format!(
                    "connect to mqtt {topic} failed: no mqtt client: add an [mqtt] section to the site config"
                )));
            };
            Connection::Topic { topic, bus }
        }
    })
}

/// A transport failure in the driver layer's terms, its wording kept.
pub fn error(e: TransportError) -> LinkError {
    match e {
        TransportError::Closed => LinkError::Closed,
        TransportError::Io(e) => LinkError::Io(e),
        other => LinkError::Open(other.to_string()),
    }
}

fn topic_error(e: MqttError) -> TopicError {
    match e {
        MqttError::NotConnected => TopicError::NotConnected,
        MqttError::QueueFull => TopicError::QueueFull,
        MqttError::Stopped => TopicError::Stopped,
        other => TopicError::Refused(other.to_string()),
    }
}

#[async_trait]
impl Topics for MqttHandle {
    fn broker(&self) -> String {
        MqttHandle::broker(self).to_owned()
    }
    fn is_connected(&self) -> bool {
        MqttHandle::is_connected(self)
    }
    async fn wait_connected(&self, within: Duration) -> bool {
        MqttHandle::wait_connected(self, within).await
    }
    fn subscribe(
        &self,
        filters: &[&str],
        capacity: usize,
    ) -> Result<Box<dyn TopicFeed>, TopicError> {
        let sub = self
            .subscribe_many(filters, capacity)
            .map_err(topic_error)?;
        Ok(Box::new(sub))
    }
    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), TopicError> {
        MqttHandle::publish(self, topic, payload, retain).map_err(topic_error)
    }
}

#[async_trait]
impl TopicFeed for Subscription {
    async fn recv(&mut self) -> Option<TopicMessage> {
        Subscription::recv(self).await.map(|m| TopicMessage {
            topic: m.topic,
            payload: m.payload,
        })
    }
}
