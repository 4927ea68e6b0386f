use super::granted_keep_alive;

#[test]
fn keep_alive_zero_or_above_the_maximum_gets_the_maximum() {
    assert_eq!(granted_keep_alive(0, 300), 300);
    assert_eq!(granted_keep_alive(301, 300), 300);
    assert_eq!(granted_keep_alive(60, 300), 60);
    assert_eq!(granted_keep_alive(300, 300), 300);
    // A maximum of 0 in the config would mean "never": treated as 1 s.
    assert_eq!(granted_keep_alive(0, 0), 1);
}
