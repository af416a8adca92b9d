//! Bar charts of the last 24 hours, drawn on the server as SVG (no script, nothing to load).
//! Colours come from the stylesheet by class, so the CSP needs no inline style.

use kommo_pay_core::ops::activity::Hour;
use maud::{Markup, html};

#[derive(Clone, Copy)]
pub(super) enum Series {
    Events,
    Completed,
    Dead,
}

impl Series {
    fn of(self, hour: &Hour) -> i64 {
        match self {
            Series::Events => hour.events,
            Series::Completed => hour.completed,
            Series::Dead => hour.dead,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Series::Events => "events",
            Series::Completed => "completed",
            Series::Dead => "dead",
        }
    }
}

const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 140.0;
/// Room for the labels under the bars and beside the axis.
const BOTTOM: f64 = 18.0;
const LEFT: f64 = 40.0;

/// One group of bars per hour, a bar per series side by side, scaled to the largest value.
pub(super) fn bars(hours: &[Hour], series: &[Series]) -> Markup {
    let top = hours.iter().flat_map(|hour| series.iter().map(|s| s.of(hour))).max().unwrap_or(0).max(1);
    let slot = (WIDTH - LEFT) / hours.len().max(1) as f64;
    let bar = (slot - 2.0) / series.len().max(1) as f64;
    let plot = HEIGHT - BOTTOM;
    let label = series.iter().map(|s| s.name()).collect::<Vec<_>>().join(" and ");
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label={ (label) " per hour, last 24 hours" } {
                line.axis x1=(LEFT) y1=(plot) x2=(WIDTH) y2=(plot) {}
                text.tick x=(LEFT - 4.0) y="10" text-anchor="end" { (top) }
                text.tick x=(LEFT - 4.0) y=(plot) text-anchor="end" { "0" }
                @for (i, hour) in hours.iter().enumerate() {
                    @for (j, s) in series.iter().enumerate() {
                        @let value = s.of(hour);
                        @let h = plot * value as f64 / top as f64;
                        rect class={ "bar " (s.name()) } x=(format!("{:.1}", LEFT + 1.0 + i as f64 * slot + j as f64 * bar)) y=(format!("{:.1}", plot - h))
                            width=(format!("{:.1}", bar.max(1.0))) height=(format!("{:.1}", h)) {
                            title { (hour.hour.format("%H:00")) ": " (value) " " (s.name()) }
                        }
                    }
                    @if i % 6 == 0 {
                        text.tick x=(format!("{:.1}", LEFT + i as f64 * slot)) y=(HEIGHT - 4.0) { (hour.hour.format("%H:00")) }
                    }
                }
            }
            figcaption {
                @for s in series {
                    span class={ "key " (s.name()) } { (s.name()) ": " (hours.iter().map(|h| s.of(h)).sum::<i64>()) }
                }
                " in 24 h"
            }
        }
    }
}
