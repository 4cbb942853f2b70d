from rowrnn.cli import main

main()
