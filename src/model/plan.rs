//! The building's meeting-service plan as rules (../shared/domain.md, "Fault and complaint
//! handling"): the three classes of faults and complaints with their response and resolution
//! deadlines, and the rule that classes a fault. The monthly report and the playbook share
//! these; neither keeps its own copy.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::Severity;

/// The plan's three classes, used for faults as for complaints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// 重大: same-day response, answer within 2 days.
    Major,
    /// 重要: taken within 1 hour, resolved within 3 days.
    Important,
    /// 一般: handling starts within 10 minutes, resolved within 2 days.
    General,
}

impl FaultClass {
    pub const ALL: [FaultClass; 3] = [
        FaultClass::Major,
        FaultClass::Important,
        FaultClass::General,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultClass::Major => "major",
            FaultClass::Important => "important",
            FaultClass::General => "general",
        }
    }

    pub fn parse(s: &str) -> Option<FaultClass> {
        match s {
            "major" => Some(FaultClass::Major),
            "important" => Some(FaultClass::Important),
            "general" => Some(FaultClass::General),
            _ => None,
        }
    }

    /// When handling must have started (domain.md): major the same (local) day, important
    /// within 1 hour, general within 10 minutes.
    pub fn response_deadline(self, raised: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self {
            FaultClass::Major => {
                let day = raised.with_timezone(&tz).date_naive();
                local_midnight(day + Duration::days(1), tz)
            }
            FaultClass::Important => raised + Duration::hours(1),
            FaultClass::General => raised + Duration::minutes(10),
        }
    }

    /// When it must be resolved: major 2 days, important 3 days, general 2 days.
    pub fn resolution_deadline(self, raised: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            FaultClass::Major | FaultClass::General => raised + Duration::days(2),
            FaultClass::Important => raised + Duration::days(3),
        }
    }
}

/// The class of a fault. An explicit class (set by the playbook or a person, carried in the
/// entry's data as `class`) wins; otherwise a fault that makes a function unusable is major
/// during a booking and important outside one, and a warning is general. Pure.
pub fn fault_class(
    severity: Severity,
    explicit: Option<FaultClass>,
    during_booking: bool,
) -> FaultClass {
    if let Some(c) = explicit {
        return c;
    }
    match (severity, during_booking) {
        (Severity::Fault, true) => FaultClass::Major,
        (Severity::Fault, false) => FaultClass::Important,
        (Severity::Warning, _) => FaultClass::General,
    }
}

/// The first instant of `day` in `tz`, in UTC.
pub fn local_midnight(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let naive = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    // A zone whose midnight is skipped by a DST change starts the day at the first instant.
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&naive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_rule() {
        use FaultClass::*;
        assert_eq!(fault_class(Severity::Fault, None, true), Major);
        assert_eq!(fault_class(Severity::Fault, None, false), Important);
        assert_eq!(fault_class(Severity::Warning, None, true), General);
        assert_eq!(fault_class(Severity::Warning, None, false), General);
        assert_eq!(fault_class(Severity::Warning, Some(Major), false), Major);
        assert_eq!(fault_class(Severity::Fault, Some(General), true), General);
    }

    #[test]
    fn deadlines_follow_the_plan() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        // 2026-11-03 23:30 local = 15:30 UTC.
        let raised = Utc.with_ymd_and_hms(2026, 11, 3, 15, 30, 0).unwrap();
        assert_eq!(
            FaultClass::Major.response_deadline(raised, tz),
            Utc.with_ymd_and_hms(2026, 11, 3, 16, 0, 0).unwrap(),
            "same local day"
        );
        assert_eq!(
            FaultClass::Important.response_deadline(raised, tz),
            raised + Duration::hours(1)
        );
        assert_eq!(
            FaultClass::General.response_deadline(raised, tz),
            raised + Duration::minutes(10)
        );
        assert_eq!(
            FaultClass::Major.resolution_deadline(raised),
            raised + Duration::days(2)
        );
        assert_eq!(
            FaultClass::Important.resolution_deadline(raised),
            raised + Duration::days(3)
        );
        assert_eq!(
            FaultClass::General.resolution_deadline(raised),
            raised + Duration::days(2)
        );
    }
}
