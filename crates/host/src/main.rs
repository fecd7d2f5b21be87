fn main() {
    eprintln!("infinibay: the host is not built yet");
    std::process::exit(2);
}
