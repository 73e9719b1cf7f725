//! The dashboard's two languages, Vietnamese and English: its labels, and numbers and dates the
//! way each writes them (Vietnamese: `1.234,5`, `13/01/2024 15:00`).

use axum::http::{HeaderMap, header};

/// The cookie that keeps a language chosen by hand.
pub const COOKIE: &str = "alohook_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Vi,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }

    pub fn parse(text: &str) -> Option<Lang> {
        match text {
            "vi" => Some(Lang::Vi),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The language chosen by hand (its cookie), else the first of the browser's languages that
    /// is Vietnamese or English, else English.
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(lang) = super::session::cookie(headers, COOKIE).and_then(|c| Lang::parse(&c)) {
            return lang;
        }
        let accepted = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut ranked: Vec<(f32, usize, &str)> = accepted
            .split(',')
            .enumerate()
            .filter_map(|(i, part)| {
                let mut pieces = part.trim().split(';');
                let tag = pieces.next()?.trim();
                let q = pieces
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some((q, i, tag))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked
            .iter()
            .find_map(|(_, _, tag)| {
                let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
                Lang::parse(&primary)
            })
            .unwrap_or(Lang::En)
    }

    /// The other language (the switch offers it).
    pub fn other(self) -> Lang {
        match self {
            Lang::Vi => Lang::En,
            Lang::En => Lang::Vi,
        }
    }

    /// The label `key` in this language; the key itself when there is none (a test checks every
    /// key the pages use has both).
    pub fn t(self, key: &'static str) -> &'static str {
        TEXTS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(key, |(_, en, vi)| match self {
                Lang::En => en,
                Lang::Vi => vi,
            })
    }

    /// An integer with thousands separators: `12,345` / `12.345`.
    pub fn int(self, n: i64) -> String {
        let digits = n.unsigned_abs().to_string();
        let sep = match self {
            Lang::En => ',',
            Lang::Vi => '.',
        };
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(sep);
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    }

    /// A number with one decimal: `12.5` / `12,5`.
    pub fn dec(self, x: f64) -> String {
        let text = format!("{x:.1}");
        match self {
            Lang::En => text,
            Lang::Vi => text.replace('.', ","),
        }
    }

    /// A rate as a percentage with one decimal (`85.3%` / `85,3%`), or `–` for none.
    pub fn rate(self, r: Option<f64>) -> String {
        r.map_or_else(|| "–".to_string(), |r| format!("{}%", self.dec(r * 100.0)))
    }

    /// A local time as the API writes it (`2024-01-13T15:00:35+07:00`) the way this language
    /// reads it: `13/01/2024 15:00:35` / `2024-01-13 15:00:35`.
    pub fn time(self, rfc3339: &str) -> String {
        let Some((date, rest)) = rfc3339.split_once('T') else {
            return rfc3339.to_string();
        };
        let clock: String = rest.chars().take(8).collect();
        match self {
            Lang::En => format!("{date} {clock}"),
            Lang::Vi => {
                let parts: Vec<&str> = date.split('-').collect();
                match parts.as_slice() {
                    [y, m, d] => format!("{d}/{m}/{y} {clock}"),
                    _ => format!("{date} {clock}"),
                }
            }
        }
    }

    /// A number of minutes: `15 min` / `15 phút`.
    pub fn minutes(self, seconds: i64) -> String {
        let m = seconds / 60;
        match self {
            Lang::En => format!("{m} min"),
            Lang::Vi => format!("{m} phút"),
        }
    }

    /// A duration in seconds: `1:05:09`, `5:09`; over a day `3d 4:05:09` / `3 ngày 4:05:09`.
    pub fn duration(self, seconds: i64) -> String {
        let s = seconds.max(0);
        if s >= 86_400 {
            let days = s / 86_400;
            let rest = s % 86_400;
            let rest = format!("{}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60);
            match self {
                Lang::En => format!("{days}d {rest}"),
                Lang::Vi => format!("{days} ngày {rest}"),
            }
        } else if s >= 3600 {
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        } else {
            format!("{}:{:02}", s / 60, s % 60)
        }
    }
}

/// (key, English, Vietnamese).
pub const TEXTS: &[(&str, &str, &str)] = &[
    ("app", "alohook", "alohook"),
    ("nav.live", "Live", "Trực tiếp"),
    ("nav.calls", "Calls", "Cuộc gọi"),
    ("nav.callbacks", "Callbacks", "Gọi lại"),
    ("nav.reports", "Reports", "Báo cáo"),
    ("nav.forwarding", "Forwarding", "Chuyển tiếp"),
    ("sign_in", "Sign in", "Đăng nhập"),
    ("sign_out", "Sign out", "Đăng xuất"),
    ("token", "Token", "Mã truy cập"),
    (
        "sign_in.help",
        "Sign in with the API token, or the viewer token for read-only access.",
        "Đăng nhập bằng mã API, hoặc mã chỉ xem để xem mà không thay đổi gì.",
    ),
    (
        "sign_in.wrong",
        "That token is not valid here.",
        "Mã truy cập không hợp lệ.",
    ),
    (
        "sign_in.expired",
        "The form expired; please sign in again.",
        "Biểu mẫu đã hết hạn, vui lòng đăng nhập lại.",
    ),
    ("role.admin", "Administrator", "Quản trị"),
    ("role.viewer", "Viewer (read-only)", "Người xem (chỉ xem)"),
    ("language", "Tiếng Việt", "English"),
    ("live.now", "Calls now", "Cuộc gọi đang diễn ra"),
    ("live.recent", "Last ended calls", "Cuộc gọi vừa kết thúc"),
    ("live.today", "Today", "Hôm nay"),
    (
        "live.none",
        "No call right now.",
        "Hiện không có cuộc gọi nào.",
    ),
    ("live.connected", "Live", "Đang cập nhật"),
    ("live.offline", "Reconnecting…", "Đang kết nối lại…"),
    ("kpi.calls", "Calls", "Cuộc gọi"),
    ("kpi.answered", "Answered", "Đã trả lời"),
    ("kpi.missed", "Missed", "Nhỡ"),
    ("kpi.answer_rate", "Answer rate", "Tỷ lệ trả lời"),
    ("kpi.open_callbacks", "Open callbacks", "Cần gọi lại"),
    ("col.caller", "Caller", "Người gọi"),
    ("col.hotline", "Hotline", "Hotline"),
    ("col.agent", "Agent", "Nhân viên"),
    ("col.state", "State", "Trạng thái"),
    ("col.for", "For", "Thời lượng"),
    ("col.start", "Start", "Bắt đầu"),
    ("col.direction", "Direction", "Chiều"),
    ("col.status", "Status", "Kết quả"),
    ("col.talk", "Talk", "Đàm thoại"),
    ("col.ring", "Ring", "Đổ chuông"),
    ("col.destination", "Destination", "Đích"),
    ("col.received", "Received", "Nhận lúc"),
    ("col.attempts", "Attempts", "Số lần gửi"),
    ("col.type", "Change", "Loại thay đổi"),
    ("status.answered", "answered", "đã trả lời"),
    ("status.missed", "missed", "nhỡ"),
    ("status.busy", "busy", "máy bận"),
    ("status.failed", "failed", "lỗi"),
    ("phase.ringing", "Ringing", "Đang đổ chuông"),
    ("phase.in_progress", "In progress", "Đang đàm thoại"),
    ("phase.ended", "Ended", "Đã kết thúc"),
    ("dir.inbound", "Inbound", "Gọi vào"),
    ("dir.outbound", "Outbound", "Gọi ra"),
    ("calls.search", "Search", "Tìm"),
    ("calls.phone", "Phone (any form)", "Số điện thoại"),
    ("calls.status", "Status", "Kết quả"),
    ("calls.hotline", "Hotline", "Hotline"),
    ("calls.agent", "Agent", "Nhân viên"),
    ("calls.direction", "Direction", "Chiều"),
    ("calls.any", "Any", "Tất cả"),
    ("calls.from", "From", "Từ ngày"),
    ("calls.to", "To", "Đến ngày"),
    ("calls.next", "Next page", "Trang sau"),
    (
        "calls.none",
        "No call matches.",
        "Không có cuộc gọi nào phù hợp.",
    ),
    ("call.title", "Call", "Cuộc gọi"),
    ("call.record", "Record", "Thông tin"),
    ("call.events", "Events", "Sự kiện"),
    ("call.recording", "Recording", "Ghi âm"),
    ("call.forwarded", "Forwarding", "Chuyển tiếp"),
    (
        "call.not_forwarded",
        "Not forwarded to any destination.",
        "Chưa chuyển tiếp tới đích nào.",
    ),
    ("call.warnings", "Warnings", "Cảnh báo"),
    ("call.payload", "Payload as received", "Dữ liệu nhận được"),
    ("call.resent", "times received", "lần nhận"),
    ("call.not_found", "No such call.", "Không có cuộc gọi này."),
    ("field.call_id", "Call id", "Mã cuộc gọi"),
    ("field.caller_number", "Caller number", "Số gọi"),
    ("field.destination_number", "Destination number", "Số nhận"),
    ("field.answer_time", "Answered at", "Trả lời lúc"),
    ("field.end_time", "Ended at", "Kết thúc lúc"),
    ("field.hangup_by", "Hung up by", "Người gác máy"),
    ("field.transaction_id", "Transaction id", "Mã giao dịch"),
    ("field.holding", "On hold", "Giữ máy"),
    ("state.pending", "Pending", "Đang chờ"),
    ("state.delivered", "Delivered", "Đã gửi"),
    ("state.dead", "Failed for good", "Thất bại"),
    ("cb.targets", "Age targets:", "Mốc thời gian chờ:"),
    ("cb.amber", "amber", "vàng"),
    ("cb.red", "red", "đỏ"),
    (
        "cb.none",
        "No one waits for a call back.",
        "Không còn ai chờ gọi lại.",
    ),
    ("cb.missed", "Missed", "Số lần nhỡ"),
    ("cb.first", "First missed", "Nhỡ lần đầu"),
    ("cb.attempts", "Tries", "Lần gọi lại"),
    ("cb.age", "Waiting", "Đã chờ"),
    ("cb.close", "Close", "Đóng"),
    ("cb.note", "Note", "Ghi chú"),
    (
        "cb.more",
        "More items wait below the first 200.",
        "Còn mục khác sau 200 mục đầu.",
    ),
    ("cb.closed", "Closed last", "Đã đóng gần đây"),
    ("cb.closed_at", "Closed at", "Đóng lúc"),
    ("cb.closed_by", "Closed by", "Đóng bởi"),
    ("cb.by_hand", "By hand", "Đóng thủ công"),
    (
        "cb.reason.inbound",
        "Caller got through:",
        "Khách gọi lại được:",
    ),
    ("cb.reason.outbound", "Called back:", "Đã gọi lại:"),
    ("cb.reason.call", "Call:", "Cuộc gọi:"),
    ("rp.by", "Step", "Theo"),
    ("rp.day", "Day", "Ngày"),
    ("rp.hour", "Hour", "Giờ"),
    ("rp.show", "Show", "Xem"),
    ("rp.csv", "Download the calls (CSV)", "Tải cuộc gọi (CSV)"),
    (
        "rp.tiles",
        "Figures of the range",
        "Chỉ số của khoảng thời gian",
    ),
    ("rp.abandon_rate", "Abandon rate", "Tỷ lệ bỏ máy"),
    ("rp.service_level", "Service level", "Mức phục vụ"),
    ("rp.asa", "Avg. speed of answer", "Chờ trả lời TB"),
    ("rp.aht", "Avg. handling", "Thời gian xử lý TB"),
    ("rp.undated", "Without a start time", "Không có giờ bắt đầu"),
    (
        "rp.chart",
        "Calls and answer rate",
        "Cuộc gọi và tỷ lệ trả lời",
    ),
    (
        "rp.heatmap",
        "Calls by weekday and hour",
        "Cuộc gọi theo thứ và giờ",
    ),
    ("rp.by_agent", "Per agent", "Theo nhân viên"),
    ("rp.by_hotline", "Per hotline", "Theo hotline"),
    ("rp.talk_total", "Talk in all", "Tổng đàm thoại"),
    ("rp.max", "max", "cao nhất"),
    ("rp.mon", "Mon", "T2"),
    ("rp.tue", "Tue", "T3"),
    ("rp.wed", "Wed", "T4"),
    ("rp.thu", "Thu", "T5"),
    ("rp.fri", "Fri", "T6"),
    ("rp.sat", "Sat", "T7"),
    ("rp.sun", "Sun", "CN"),
    ("fw.none", "No destination yet.", "Chưa có đích nào."),
    ("fw.destination", "Destination", "Đích"),
    ("fw.state", "State", "Trạng thái"),
    ("fw.oldest", "Oldest waiting", "Chờ lâu nhất"),
    ("fw.last_error", "Last error", "Lỗi gần nhất"),
    ("fw.enabled", "Enabled", "Đang bật"),
    ("fw.disabled", "Disabled", "Đã tắt"),
    ("fw.enable", "Enable", "Bật"),
    ("fw.disable", "Disable", "Tắt"),
    ("fw.replay", "Replay the dead", "Gửi lại mục thất bại"),
    ("fw.edit", "Edit", "Sửa"),
    ("fw.save", "Save", "Lưu"),
    ("fw.description", "Description", "Mô tả"),
    ("fw.new", "New destination", "Thêm đích"),
    ("fw.create", "Create", "Tạo"),
    ("fw.created", "Created:", "Đã tạo:"),
    (
        "fw.secret",
        "Its signing secret (shown once; keep it):",
        "Khóa ký (chỉ hiện một lần, hãy lưu lại):",
    ),
    ("fw.dead", "Dead letters", "Gửi thất bại"),
    (
        "fw.no_dead",
        "No delivery has failed for good.",
        "Không có lần gửi nào thất bại hẳn.",
    ),
    (
        "fw.quarantine",
        "Quarantine (rejected bodies)",
        "Cách ly (dữ liệu bị từ chối)",
    ),
    (
        "fw.no_quarantine",
        "Nothing rejected.",
        "Không có dữ liệu bị từ chối.",
    ),
    ("error.title", "Something went wrong", "Đã có lỗi"),
    (
        "error.viewer",
        "The viewer role cannot change this.",
        "Vai trò người xem không thể thay đổi mục này.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn the_browser_language_picks_vietnamese_or_english() {
        assert_eq!(Lang::of(&accept("vi-VN,vi;q=0.9,en;q=0.8")), Lang::Vi);
        assert_eq!(Lang::of(&accept("en-US,en;q=0.9,vi;q=0.8")), Lang::En);
        assert_eq!(Lang::of(&accept("fr;q=0.9,vi;q=0.5")), Lang::Vi);
        assert_eq!(Lang::of(&accept("en;q=0.4,vi;q=0.5")), Lang::Vi);
        assert_eq!(Lang::of(&HeaderMap::new()), Lang::En);
        let mut chosen = accept("vi");
        chosen.insert(header::COOKIE, HeaderValue::from_static("alohook_lang=en"));
        assert_eq!(Lang::of(&chosen), Lang::En);
    }

    #[test]
    fn numbers_and_dates_are_written_the_vietnamese_way() {
        assert_eq!(Lang::Vi.int(1_234_567), "1.234.567");
        assert_eq!(Lang::En.int(1_234_567), "1,234,567");
        assert_eq!(Lang::Vi.int(-999), "-999");
        assert_eq!(Lang::Vi.rate(Some(0.8534)), "85,3%");
        assert_eq!(Lang::En.rate(None), "–");
        assert_eq!(
            Lang::Vi.time("2024-01-13T15:00:35+07:00"),
            "13/01/2024 15:00:35"
        );
        assert_eq!(
            Lang::En.time("2024-01-13T15:00:35+07:00"),
            "2024-01-13 15:00:35"
        );
        assert_eq!(Lang::En.duration(3909), "1:05:09");
        assert_eq!(Lang::En.duration(65), "1:05");
        assert_eq!(Lang::En.duration(3 * 86_400 + 3909), "3d 1:05:09");
        assert_eq!(Lang::Vi.duration(86_400 + 65), "1 ngày 0:01:05");
        assert_eq!(Lang::Vi.minutes(900), "15 phút");
    }

    #[test]
    fn every_label_has_both_languages_and_one_key() {
        let mut keys = std::collections::HashSet::new();
        for (key, en, vi) in TEXTS {
            assert!(keys.insert(key), "{key} twice");
            assert!(!en.is_empty() && !vi.is_empty(), "{key}");
        }
    }
}
