//! (placeholder; being written)
use crate::driver::{Driver, DriverError, Link, Observer};
use crate::model::DeviceCommand;
use crate::profile::{Profile, ProfileError};
use async_trait::async_trait;
pub struct PjlinkDriver;
impl PjlinkDriver {
    pub fn new(_p: &Profile, _secret: Option<String>) -> Result<Self, ProfileError> {
        Ok(Self)
    }
}
#[async_trait]
impl Driver for PjlinkDriver {
    fn name(&self) -> &'static str {
        "pjlink"
    }
    async fn open(&mut self, _l: &mut Link, _o: &mut Observer) -> Result<(), DriverError> {
        Ok(())
    }
    async fn read_all(&mut self, _l: &mut Link, _o: &mut Observer) -> Result<(), DriverError> {
        Ok(())
    }
    async fn execute(
        &mut self,
        _l: &mut Link,
        _o: &mut Observer,
        _c: &DeviceCommand,
    ) -> Result<(), DriverError> {
        Ok(())
    }
}
