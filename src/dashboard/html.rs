//! The few pieces of HTML every dashboard page is made of: escaping, the page frame, words
//! and icons for states, times in the site's zone.
//!
//! Owns the one escape function: every text that comes from a device, a config or a person
//! goes through [`esc`] before it reaches a page. Must not read state; it only formats.

use chrono::{DateTime, Utc};

use crate::model::Health;

/// `text` safe inside HTML text and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment (a room or device id) safe inside a URL.
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// How a state is shown: a CSS class (the colour), an icon and a word, so colour is never
/// the only signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub class: &'static str,
    pub icon: &'static str,
    pub word: &'static str,
}

impl Mark {
    pub fn badge(self) -> String {
        format!(
            r#"<span class="badge {}"><span aria-hidden="true">{}</span> {}</span>"#,
            self.class, self.icon, self.word
        )
    }
}

pub const GOOD: &str = "good";
pub const WARN: &str = "warn";
pub const BAD: &str = "bad";
pub const NEUTRAL: &str = "neutral";

pub fn health_mark(h: Health) -> Mark {
    let (class, icon) = match h {
        Health::Ok => (GOOD, "✓"),
        Health::Busy => (NEUTRAL, "…"),
        Health::Unknown => (NEUTRAL, "?"),
        Health::Degraded => (WARN, "!"),
        Health::Faulted => (BAD, "✗"),
        Health::Unreachable => (BAD, "⨯"),
    };
    Mark {
        class,
        icon,
        word: h.as_str(),
    }
}

/// A room's readiness now, from its worst device: ready, degraded, not ready, or not yet
/// known (no device has answered).
pub fn room_mark(worst: Health) -> Mark {
    match worst {
        Health::Ok | Health::Busy => Mark {
            class: GOOD,
            icon: "✓",
            word: "ready",
        },
        Health::Degraded => Mark {
            class: WARN,
            icon: "!",
            word: "degraded",
        },
        Health::Faulted | Health::Unreachable => Mark {
            class: BAD,
            icon: "✗",
            word: "not ready",
        },
        Health::Unknown => Mark {
            class: NEUTRAL,
            icon: "?",
            word: "not yet checked",
        },
    }
}

pub fn readiness_mark(r: crate::model::Readiness) -> Mark {
    use crate::model::Readiness;
    match r {
        Readiness::Ready => Mark {
            class: GOOD,
            icon: "✓",
            word: "ready",
        },
        Readiness::Degraded => Mark {
            class: WARN,
            icon: "!",
            word: "degraded",
        },
        Readiness::NotReady => Mark {
            class: BAD,
            icon: "✗",
            word: "not ready",
        },
    }
}

/// Times in the site's zone, as a technician reads them.
#[derive(Debug, Clone, Copy)]
pub struct Zone(pub chrono_tz::Tz);

impl Zone {
    pub fn of(name: &str) -> Self {
        Self(name.parse().unwrap_or(chrono_tz::UTC))
    }

    pub fn hm(self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0).format("%H:%M").to_string()
    }

    pub fn day_hm(self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.0)
            .format("%a %d %b %H:%M")
            .to_string()
    }

    /// A `<time>` element: the local time shown, the instant in its `datetime`.
    pub fn time(self, t: DateTime<Utc>, long: bool) -> String {
        let shown = if long { self.day_hm(t) } else { self.hm(t) };
        format!(r#"<time datetime="{}">{shown}</time>"#, t.to_rfc3339())
    }
}

/// "4 min", "2 h 5 min": how long ago or how long.
pub fn span(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Who is looking and whether the page may offer changes.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub may_act: bool,
    /// Whether the daemon asks for tokens (else the open local demo, with no login).
    pub login: bool,
}

/// A whole page: landmarks, skip link, the navigation, `main` holding `body`.
pub fn page(title: &str, site: &str, current: &str, viewer: &Viewer, body: &str) -> String {
    let nav = [("/", "Board"), ("/logbook", "Logbook")]
        .iter()
        .map(|(href, label)| {
            let here = if *href == current {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(r#"<li><a href="{href}"{here}>{label}</a></li>"#)
        })
        .collect::<String>();
    let account = if viewer.name.is_empty() {
        String::new()
    } else if viewer.login {
        format!(
            r#"<span class="who">Signed in as {}</span> <button type="button" id="logout" class="link">Sign out</button>"#,
            esc(&viewer.name)
        )
    } else {
        r#"<span class="who">Local demo (no sign-in)</span>"#.to_owned()
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {site} · avwarden</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/dashboard.js" defer></script>
</head>
<body data-may-act="{may_act}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<p class="brand"><a href="/">avwarden</a> <span class="site">{site}</span></p>
<nav aria-label="Main"><ul>{nav}</ul></nav>
<p class="account">{account}</p>
<p class="live" id="live-status" role="status">Live updates: connecting…</p>
</header>
<main id="main" tabindex="-1">
<h1>{title}</h1>
{body}
</main>
<footer><p>avwarden {version}</p></footer>
</body>
</html>
"##,
        title = esc(title),
        site = esc(site),
        may_act = viewer.may_act,
        version = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_open_a_tag_or_leave_an_attribute() {
        assert_eq!(
            esc(r#"<script>"a"&'b'</script>"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(seg("r 1/../x"), "r%201%2F..%2Fx");
        assert_eq!(seg("room-1_a.b"), "room-1_a.b");
    }

    #[test]
    fn every_state_has_a_word_and_an_icon_besides_its_colour() {
        for h in [
            Health::Ok,
            Health::Busy,
            Health::Unknown,
            Health::Degraded,
            Health::Faulted,
            Health::Unreachable,
        ] {
            for m in [health_mark(h), room_mark(h)] {
                assert!(!m.word.is_empty() && !m.icon.is_empty(), "{h:?}");
            }
        }
        assert_eq!(room_mark(Health::Faulted).word, "not ready");
        assert_eq!(span(chrono::Duration::seconds(3725)), "1 h 2 min");
    }
}
