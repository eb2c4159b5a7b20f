from mrctprep.bids_app.run import main

if __name__ == '__main__':
    main()
