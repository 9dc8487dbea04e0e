use super::*;
use crate::report::tests::sample_run;

/// Pixels of `rgb` (an image `w` wide) equal to `color`.
fn count(rgb: &[u8], color: (u8, u8, u8)) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| (p[0], p[1], p[2]) == color)
        .count()
}

#[test]
fn text_is_drawn_with_the_bitmap_font() {
    let (w, h) = (40u32, 20u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let mut b = TextBackend(BitMapBackend::with_buffer(&mut buf, (w, h)));
        let style = ("sans-serif", 8).into_font().color(&BLACK);
        assert_eq!(b.estimate_text_size("Hi", &style).unwrap(), (16, 8));
        b.draw_text("Hi", &style, (0, 0)).unwrap();
        // Twice the size: twice the scale.
        let big = ("sans-serif", 16).into_font().color(&BLACK);
        assert_eq!(b.estimate_text_size("Hi", &big).unwrap(), (32, 16));
        b.present().unwrap();
    }
    let black = count(&buf, (0, 0, 0));
    // "H" and "i" of font8x8 have 22 and 10 pixels set.
    let expected: u32 = glyph('H')
        .iter()
        .chain(glyph('i').iter())
        .map(|b| b.count_ones())
        .sum();
    assert_eq!(black, expected as usize);
    // Nothing lies outside the 16x8 box.
    for y in 0..h as usize {
        for x in 0..w as usize {
            let i = (y * w as usize + x) * 3;
            if x >= 16 || y >= 8 {
                assert_eq!(buf[i], 255, "pixel {x},{y}");
            }
        }
    }
}

#[test]
fn glyphs_cover_ascii_and_replace_the_rest() {
    assert_eq!(glyph('A'), font8x8::legacy::BASIC_LEGACY['A' as usize]);
    assert_ne!(glyph('A'), [0; 8]);
    assert_eq!(glyph('é'), glyph('?'));
    assert_eq!(glyph(' '), [0; 8]);
}

#[test]
fn png_is_written_and_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("report.png");
    let report = sample_run();
    write_png(&report, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((info.width, info.height), size(&report));
    assert_eq!(
        (info.width, info.height),
        (WIDTH, PSI_HEIGHT + PANEL_HEIGHT)
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let rgb = &rgb[..info.buffer_size()];
    // The PMD-mapped line (blue), the collapse marks (red), and text (black).
    assert!(count(rgb, (0, 0, 255)) > 100);
    assert!(count(rgb, (255, 0, 0)) > 20);
    assert!(count(rgb, (0, 0, 0)) > 1000);
    // Mostly white.
    assert!(count(rgb, (255, 255, 255)) > rgb.len() / 3 / 2);
}

#[test]
fn a_run_without_processes_still_has_a_picture() {
    let mut report = sample_run();
    report.targets.clear();
    report.psi.clear();
    let rgb = render(&report).unwrap();
    assert_eq!(size(&report), (WIDTH, PSI_HEIGHT + PANEL_HEIGHT));
    assert_eq!(
        rgb.len(),
        (WIDTH * (PSI_HEIGHT + PANEL_HEIGHT) * 3) as usize
    );
    assert!(count(&rgb, (0, 0, 0)) > 100);
}

#[test]
fn at_most_eight_panels_the_busiest() {
    let mut report = sample_run();
    let one = report.targets[0].clone();
    report.targets = (0..10)
        .map(|i| {
            let mut t = one.clone();
            t.pid = i;
            // Process 3 has no collapse.
            if i == 3 {
                t.collapses.clear();
            }
            t
        })
        .collect();
    let pids: Vec<i32> = shown(&report).iter().map(|t| t.pid).collect();
    assert_eq!(pids.len(), MAX_PANELS);
    assert!(!pids.contains(&3));
    assert_eq!(
        size(&report).1,
        PSI_HEIGHT + MAX_PANELS as u32 * PANEL_HEIGHT
    );
    render(&report).unwrap();
}
