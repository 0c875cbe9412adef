package storage

import "time"

var zeroTime time.Time
