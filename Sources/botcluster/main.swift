import BotCluster
import Worker

await BotCluster.main(handler: ExampleBot())
