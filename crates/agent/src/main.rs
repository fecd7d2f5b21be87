fn main() {
    eprintln!("infiniservice: the agent is not built yet");
    std::process::exit(2);
}
