package daemon

// SetAfterPublishSent makes f run between a publication's sending and
// its record (nil: nothing), for tests of what happens meanwhile.
func SetAfterPublishSent(f func()) { afterPublishSent = f }

// SetBeforeCatalog makes f run before each catalog is made (nil:
// nothing), holding its place among those answered at once.
func SetBeforeCatalog(f func()) { beforeCatalog = f }

// BrowsesDropped counts the browses d dropped, over the catalogs it
// answers at once.
func BrowsesDropped(d *Daemon) int64 { return d.pubs.browsesDropped.Load() }

// MaxAnswering is how many catalogs a daemon answers at once.
const MaxAnswering = maxAnswering
