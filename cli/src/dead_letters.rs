//! `sessionfold dead-letters`: list the messages the processor could never
//! apply, and replay them once the cause is fixed.

use sessionfold_common::jetstream as js_setup;
use sessionfold_common::settings::NatsSettings;
use sessionfold_processor::dead_letter;

#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    pub nats: NatsSettings,
    /// Stream that keeps dead letters.
    #[arg(long, env = "DEAD_LETTER_STREAM", default_value = sessionfold_core::names::DEFAULT_DEAD_LETTER_STREAM)]
    pub dead_letter_stream: String,
    #[command(subcommand)]
    pub action: DeadLetterAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterAction {
    /// Print every dead letter as one JSON object per line.
    List,
    /// Publish dead letters again on their original subject and remove them.
    Replay {
        /// Dead-letter sequences to replay.
        #[arg(required_unless_present = "all")]
        sequences: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    let client = js_setup::connect(&args.nats, "sessionfold-dead-letters").await?;
    let js = async_nats::jetstream::new(client);
    match args.action {
        DeadLetterAction::List => {
            for letter in dead_letter::list(&js, &args.dead_letter_stream).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
        }
        DeadLetterAction::Replay { sequences, all } => {
            let sequences = if all {
                dead_letter::list(&js, &args.dead_letter_stream)
                    .await?
                    .into_iter()
                    .map(|letter| letter.sequence)
                    .collect()
            } else {
                sequences
            };
            for sequence in sequences {
                let new_sequence =
                    dead_letter::replay(&js, &args.dead_letter_stream, sequence).await?;
                println!("replayed dead letter {sequence} as event {new_sequence}");
            }
        }
    }
    Ok(())
}
