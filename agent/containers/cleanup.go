package containers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
)

// Leftovers are what of a project is still on the engine.
type Leftovers struct {
	Containers, Networks, Volumes, Images []string
}

// Empty reports whether nothing is left.
func (l Leftovers) Empty() bool {
	return len(l.Containers)+len(l.Networks)+len(l.Volumes)+len(l.Images) == 0
}

// String lists what is left.
func (l Leftovers) String() string {
	var parts []string
	add := func(kind string, ids []string) {
		if len(ids) > 0 {
			parts = append(parts, fmt.Sprintf("%d %s (%s)", len(ids), kind, strings.Join(ids, ", ")))
		}
	}
	add("containers", l.Containers)
	add("networks", l.Networks)
	add("volumes", l.Volumes)
	add("images", l.Images)
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// Leftovers lists every container, network, volume and image labelled as
// the project's.
func (d *Docker) Leftovers(ctx context.Context, project string) (Leftovers, error) {
	var l Leftovers
	cs, err := d.api.ContainerList(ctx, container.ListOptions{All: true, Filters: projectFilter(project)})
	if err != nil {
		return l, fmt.Errorf("leftovers of %s: containers: %w", project, err)
	}
	for _, c := range cs {
		l.Containers = append(l.Containers, strings.TrimPrefix(firstOr(c.Names, c.ID), "/"))
	}
	ns, err := d.api.NetworkList(ctx, network.ListOptions{Filters: projectFilter(project)})
	if err != nil {
		return l, fmt.Errorf("leftovers of %s: networks: %w", project, err)
	}
	for _, n := range ns {
		l.Networks = append(l.Networks, n.Name)
	}
	vs, err := d.api.VolumeList(ctx, volume.ListOptions{Filters: projectFilter(project)})
	if err != nil {
		return l, fmt.Errorf("leftovers of %s: volumes: %w", project, err)
	}
	for _, v := range vs.Volumes {
		l.Volumes = append(l.Volumes, v.Name)
	}
	is, err := d.api.ImageList(ctx, image.ListOptions{Filters: projectFilter(project)})
	if err != nil {
		return l, fmt.Errorf("leftovers of %s: images: %w", project, err)
	}
	for _, i := range is {
		l.Images = append(l.Images, firstOr(i.RepoTags, i.ID))
	}
	return l, nil
}

func firstOr(list []string, fallback string) string {
	if len(list) > 0 {
		return list[0]
	}
	return fallback
}

// RemoveAll force-removes whatever of the project is left, containers
// first, and returns what it could not remove.
func (d *Docker) RemoveAll(ctx context.Context, project string) error {
	l, err := d.Leftovers(ctx, project)
	if err != nil {
		return err
	}
	var errs []error
	keep := func(err error) {
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	for _, c := range l.Containers {
		keep(d.api.ContainerRemove(ctx, c, container.RemoveOptions{Force: true, RemoveVolumes: true}))
	}
	for _, n := range l.Networks {
		keep(d.api.NetworkRemove(ctx, n))
	}
	for _, v := range l.Volumes {
		keep(d.api.VolumeRemove(ctx, v, true))
	}
	is, err := d.api.ImageList(ctx, image.ListOptions{Filters: projectFilter(project)})
	keep(err)
	for _, i := range is {
		_, err := d.api.ImageRemove(ctx, i.ID, image.RemoveOptions{Force: true, PruneChildren: true})
		keep(err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove leftovers of %s: %w", project, err)
	}
	return nil
}

// PruneDangling removes the project's images that no tag names and no
// container uses: those a rebuild replaced. It returns how many went.
func (d *Docker) PruneDangling(ctx context.Context, project string) (int, error) {
	rep, err := d.api.ImagesPrune(ctx, projectFilter(project, filters.Arg("dangling", "true")))
	if err != nil {
		return 0, fmt.Errorf("prune replaced images of %s: %w", project, err)
	}
	return len(rep.ImagesDeleted), nil
}

// PruneBuildCache trims the engine's build cache to at most limit bytes,
// the records least recently and least often used first, and returns how
// many records went and the bytes they freed. The cache is the engine's,
// not a project's: BuildKit marks no record with the project it built.
func (d *Docker) PruneBuildCache(ctx context.Context, limit int64) (int, uint64, error) {
	rep, err := d.api.BuildCachePrune(ctx, build.CachePruneOptions{
		// Engines before API 1.48 (Docker 28) read only keep-storage, as
		// the size to prune down to; later ones prune down to
		// max-used-space and read keep-storage as a floor, the same size.
		KeepStorage:  limit,
		MaxUsedSpace: limit,
		// Not All: internal and frontend records stay (a Dockerfile
		// frontend may not be pullable again), and so do the records that
		// back an image, which prune would free no disk for.
	})
	if err != nil {
		return 0, 0, fmt.Errorf("prune build cache to %d bytes: %w", limit, err)
	}
	return len(rep.CachesDeleted), rep.SpaceReclaimed, nil
}
