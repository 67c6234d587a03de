import BotCluster

await BotCluster.main()
